package handlers_test

import (
	"context"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.uber.org/goleak"

	"github.com/busline/busline/internal/ordertest"
	"github.com/busline/busline/schema"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// consumerRegistry is the v3 consumer: v3 current, v1 -> v2 -> v3 upcasters.
func consumerRegistry(tb testing.TB) *schema.Registry {
	tb.Helper()
	r := schema.NewRegistry(schema.WithSource("/billing"))
	schema.Register[ordertest.V3](r, ordertest.Created, 3)
	r.Upcast(ordertest.Created, 1, 2, ordertest.Up1to2)
	r.Upcast(ordertest.Created, 2, 3, ordertest.Up2to3)
	if err := r.Check(); err != nil {
		tb.Fatal(err)
	}
	return r
}

// v1Registry is an old producer that knows only v1.
func v1Registry() *schema.Registry {
	r := schema.NewRegistry(schema.WithSource("/legacy-orders"))
	schema.Register[ordertest.V1](r, ordertest.Created, 1)
	return r
}

func v1Message(tb testing.TB, id string, amount float64) *message.Message {
	tb.Helper()
	msg, err := v1Registry().NewMessage(context.Background(), ordertest.V1{ID: id, Amount: amount})
	if err != nil {
		tb.Fatal(err)
	}
	return msg
}

// recorder is a Publisher that keeps what it is given.
type recorder struct {
	mu   sync.Mutex
	msgs []*message.Message
}

func (r *recorder) Publish(_ context.Context, topic string, msgs ...*message.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, msgs...)
	return nil
}
