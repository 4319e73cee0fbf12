package handlers_test

import (
	"context"
	"encoding/json"
	"math"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.uber.org/goleak"

	"github.com/busline/busline/schema"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const orderCreated = "com.example.order.created"

// Three versions of one event: v1 had a float amount, v2 integer cents, v3
// renamed id to order_id and added the currency.
type orderV1 struct {
	ID     string  `json:"id"`
	Amount float64 `json:"amount"`
}

type orderV2 struct {
	ID          string `json:"id"`
	AmountCents int64  `json:"amount_cents"`
}

type orderV3 struct {
	OrderID     string `json:"order_id"`
	AmountCents int64  `json:"amount_cents"`
	Currency    string `json:"currency"`
}

func upOrder1to2(data []byte) ([]byte, error) {
	var v orderV1
	if err := json.Unmarshal(data, &v); err != nil {
		return nil, err
	}
	return json.Marshal(orderV2{ID: v.ID, AmountCents: int64(math.Round(v.Amount * 100))})
}

func upOrder2to3(data []byte) ([]byte, error) {
	var v orderV2
	if err := json.Unmarshal(data, &v); err != nil {
		return nil, err
	}
	return json.Marshal(orderV3{OrderID: v.ID, AmountCents: v.AmountCents, Currency: "EUR"})
}

// consumerRegistry is the v3 consumer: v3 current, v1 -> v2 -> v3 upcasters.
func consumerRegistry(tb testing.TB) *schema.Registry {
	tb.Helper()
	r := schema.NewRegistry(schema.WithSource("/billing"))
	schema.Register[orderV3](r, orderCreated, 3)
	r.Upcast(orderCreated, 1, 2, upOrder1to2)
	r.Upcast(orderCreated, 2, 3, upOrder2to3)
	if err := r.Check(); err != nil {
		tb.Fatal(err)
	}
	return r
}

// v1Registry is an old producer that knows only v1.
func v1Registry() *schema.Registry {
	r := schema.NewRegistry(schema.WithSource("/legacy-orders"))
	schema.Register[orderV1](r, orderCreated, 1)
	return r
}

func v1Message(tb testing.TB, id string, amount float64) *message.Message {
	tb.Helper()
	msg, err := v1Registry().NewMessage(context.Background(), orderV1{ID: id, Amount: amount})
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
