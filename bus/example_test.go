package bus_test

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus"
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
