package bus_test

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/schema"
)

// The quick start: a bus on the in-process broker, one handler, one event.
func Example() {
	b, err := bus.New(bus.Config{}, bus.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		panic(err)
	}
	done := make(chan struct{})
	err = b.Handle("greeter", "greetings", func(ctx context.Context, msg *message.Message) error {
		fmt.Printf("handled %s: %s\n", msg.UUID, msg.Payload)
		close(done)
		return nil
	})
	if err != nil {
		panic(err)
	}

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go b.Run(ctx)

	if err := b.Publish(ctx, "greetings", message.NewMessage("hello-1", []byte("hello, world"))); err != nil {
		panic(err)
	}
	<-done
	if err := b.Close(context.Background()); err != nil {
		panic(err)
	}
	// Output:
	// handled hello-1: hello, world
}

// A bad configuration fails New with every problem listed.
func ExampleConfig_Validate() {
	err := bus.Config{Broker: "kafka", ShutdownTimeout: -1}.Validate()
	fmt.Println(err)
	// Output:
	// kafka: no brokers (set BUSLINE_KAFKA_BROKERS)
	// bus: shutdown timeout -1ns is negative
}

// A handler whose messages of different keys may run concurrently while
// each key keeps its order. On Kafka that is "key" ordering: a slow or
// failing order holds back only the events of its own order id. The
// in-process broker used here hands messages out one at a time, in order,
// which keeps every ordering's promise, so the same code runs on both.
func ExampleWithOrdering() {
	b, err := bus.New(bus.Config{}, bus.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		panic(err)
	}
	done := make(chan struct{})
	seen := 0
	err = b.Handle("orders", "orders", func(ctx context.Context, msg *message.Message) error {
		fmt.Printf("%s: %s\n", msg.Metadata.Get(schema.KeyPartitionKey), msg.Payload)
		if seen++; seen == 3 {
			close(done)
		}
		return nil
	}, bus.WithOrdering(bus.OrderKey))
	if err != nil {
		panic(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go b.Run(ctx)
	var msgs []*message.Message
	for i, ev := range []struct{ key, what string }{{"o-1", "created"}, {"o-2", "created"}, {"o-1", "paid"}} {
		m := message.NewMessage(fmt.Sprint("e-", i), []byte(ev.what))
		m.Metadata.Set(schema.KeyPartitionKey, ev.key) // the ordering key
		msgs = append(msgs, m)
	}
	if err := b.Publish(ctx, "orders", msgs...); err != nil {
		panic(err)
	}
	<-done
	if err := b.Close(context.Background()); err != nil {
		panic(err)
	}
	// Output:
	// o-1: created
	// o-2: created
	// o-1: paid
}
