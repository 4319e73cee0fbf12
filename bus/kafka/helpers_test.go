package kafka_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/busline/busline/bus/broker"
	"github.com/busline/busline/bus/kafka"
)

// newBroker builds a broker on cfg, closed when the test ends.
func newBroker(t *testing.T, cfg kafka.Config) *kafka.Broker {
	t.Helper()
	b, err := kafka.New(cfg, watermill.NopLogger{})
	if err != nil {
		t.Fatalf("kafka.New: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

// newCluster starts a kfake cluster with extra options, closed when the
// test ends.
func newCluster(t *testing.T, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	opts = append([]kfake.Opt{kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(1)}, opts...)
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// receive reads n messages from ch, acking each, or fails the test after
// timeout.
func receive(t *testing.T, ch <-chan *message.Message, n int, timeout time.Duration) []*message.Message {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	var got []*message.Message
	for len(got) < n {
		select {
		case m, ok := <-ch:
			if !ok {
				t.Fatalf("channel closed after %d of %d messages", len(got), n)
			}
			m.Ack()
			got = append(got, m)
		case <-deadline.C:
			t.Fatalf("received %d of %d messages within %v", len(got), n, timeout)
		}
	}
	return got
}

// publishN publishes n messages with payloads "0".."n-1" and returns them.
func publishN(t *testing.T, pub message.Publisher, topic string, n int) []*message.Message {
	t.Helper()
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), []byte{byte('0' + i%10)})
	}
	if err := pub.Publish(topic, msgs...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	return msgs
}

// subscribe makes a subscriber of b in group and subscribes it to topic,
// failing the test on an error.
func subscribe(t testing.TB, ctx context.Context, b *kafka.Broker, group, topic string) (message.Subscriber, <-chan *message.Message) {
	t.Helper()
	return subscribeWith(t, ctx, b, group, topic, broker.SubscriberOptions{})
}

// subscribeWith makes a subscriber of b in group with cfg and subscribes
// it to topic, failing the test on an error.
func subscribeWith(t testing.TB, ctx context.Context, b *kafka.Broker, group, topic string, cfg broker.SubscriberOptions) (message.Subscriber, <-chan *message.Message) {
	t.Helper()
	sub, err := b.SubscriberWith(group, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := sub.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	return sub, ch
}
