package handlers_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/handlers"
	"github.com/busline/busline/schema"
)

// OrderCreated is version 3 of com.acme.order.created, what consumers see.
type OrderCreated struct {
	OrderID     string `json:"order_id"`
	AmountCents int64  `json:"amount_cents"`
	Currency    string `json:"currency"`
}

// OrderCreatedV1 is what a legacy producer still publishes.
type OrderCreatedV1 struct {
	ID     string  `json:"id"`
	Amount float64 `json:"amount"`
}

// newRegistry is the consumer's registry: v3 current, v1 -> v2 -> v3
// upcasters on raw JSON.
func newRegistry() *schema.Registry {
	reg := schema.NewRegistry(schema.WithSource("/billing"))
	schema.Register[OrderCreated](reg, "com.acme.order.created", 3)
	reg.Upcast("com.acme.order.created", 1, 2, func(data []byte) ([]byte, error) {
		var v OrderCreatedV1
		if err := json.Unmarshal(data, &v); err != nil {
			return nil, err
		}
		return json.Marshal(map[string]any{"id": v.ID, "amount_cents": int64(v.Amount * 100)})
	})
	reg.Upcast("com.acme.order.created", 2, 3, func(data []byte) ([]byte, error) {
		var v struct {
			ID          string `json:"id"`
			AmountCents int64  `json:"amount_cents"`
		}
		if err := json.Unmarshal(data, &v); err != nil {
			return nil, err
		}
		return json.Marshal(OrderCreated{OrderID: v.ID, AmountCents: v.AmountCents, Currency: "EUR"})
	})
	if err := reg.Check(); err != nil {
		panic(err)
	}
	return reg
}

// A legacy service publishes version 1 of an event; a handler written for
// version 3 receives it upcast, on a bus with the in-process broker.
func Example() {
	reg := newRegistry()
	legacy := schema.NewRegistry(schema.WithSource("/legacy-orders"))
	schema.Register[OrderCreatedV1](legacy, "com.acme.order.created", 1)

	b, err := bus.New(bus.Config{})
	if err != nil {
		panic(err)
	}
	handled := make(chan struct{})
	err = b.Handle("billing", "orders", handlers.Event(reg, func(ctx context.Context, o OrderCreated) error {
		env, _ := schema.EnvelopeFromContext(ctx)
		fmt.Printf("%+v, sent as v%d by %s\n", o, env.DataVersion, env.Source)
		close(handled)
		return nil
	}))
	if err != nil {
		panic(err)
	}

	ctx := context.Background()
	if err := handlers.Publish(ctx, b, legacy, "orders", OrderCreatedV1{ID: "o-1", Amount: 12.5}); err != nil {
		panic(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- b.Run(ctx) }()
	<-handled
	if err := b.Close(ctx); err != nil {
		panic(err)
	}
	fmt.Println("run:", <-ran)
	// Output:
	// {OrderID:o-1 AmountCents:1250 Currency:EUR}, sent as v1 by /legacy-orders
	// run: <nil>
}

// Process handles messages the caller fetched together in batches, and
// reports for each message whether to ack it.
func ExampleBatcher_Process() {
	reg := newRegistry()
	legacy := schema.NewRegistry(schema.WithSource("/legacy-orders"))
	schema.Register[OrderCreatedV1](legacy, "com.acme.order.created", 1)

	var msgs []*message.Message
	for i, amount := range []float64{1, 2.5, 10} {
		m, _ := legacy.NewMessage(context.Background(), OrderCreatedV1{ID: fmt.Sprint("o-", i), Amount: amount})
		msgs = append(msgs, m)
	}
	poison := message.NewMessage("bad", []byte(`{}`)) // no envelope
	msgs = append(msgs, poison)

	b := handlers.Batch(reg, handlers.BatchConfig{Size: 2},
		func(ctx context.Context, batch []handlers.Item[OrderCreated]) error {
			var total int64
			for _, it := range batch {
				total += it.Event.AmountCents
			}
			fmt.Printf("batch of %d, %d cents\n", len(batch), total)
			return nil
		})
	for i, err := range b.Process(context.Background(), msgs) {
		var se *schema.Error
		switch {
		case err == nil:
			fmt.Println(i, "ack")
		case errors.As(err, &se):
			fmt.Println(i, "dead-letter:", se.Code)
		default:
			fmt.Println(i, "nack:", err)
		}
	}
	// Output:
	// batch of 2, 350 cents
	// batch of 1, 1000 cents
	// 0 ack
	// 1 ack
	// 2 ack
	// 3 dead-letter: envelope_invalid
}
