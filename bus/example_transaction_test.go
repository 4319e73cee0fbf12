package bus_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/kafka"
)

// A consume-transform-produce handler with Kafka transactions: the consumed
// offset of "greetings" and the message published to "shouts" commit
// together, so the "shouts" reader (read_committed, like every Busline Kafka
// consumer) sees the output exactly once, whatever crashes or rebalances
// happen. The cluster is franz-go's in-process kfake.
func ExampleWithKafkaTransactions() {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation())
	if err != nil {
		panic(err)
	}
	defer cluster.Close()
	b, err := bus.New(bus.Config{
		Broker: bus.BrokerKafka,
		Group:  "example",
		// InstanceID: stable across restarts of this process (a pod name).
		Kafka: kafka.Config{Brokers: cluster.ListenAddrs(), InstanceID: "example-0"},
	}, bus.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		panic(err)
	}
	err = b.Handle("shouter", "greetings", func(ctx context.Context, msg *message.Message) error {
		// Published with the handler's ctx: inside the transaction.
		return b.Publish(ctx, "shouts", message.NewMessage(msg.UUID+"-loud", bytes.ToUpper(msg.Payload)))
	}, bus.WithKafkaTransactions())
	if err != nil {
		panic(err)
	}
	done := make(chan struct{})
	err = b.Handle("listener", "shouts", func(ctx context.Context, msg *message.Message) error {
		fmt.Printf("%s: %s\n", msg.UUID, msg.Payload)
		close(done)
		return nil
	})
	if err != nil {
		panic(err)
	}
	go b.Run(context.Background())
	if err := b.Publish(context.Background(), "greetings", message.NewMessage("hello-1", []byte("hello"))); err != nil {
		panic(err)
	}
	<-done
	if err := b.Close(context.Background()); err != nil {
		panic(err)
	}
	// Output:
	// hello-1-loud: HELLO
}
