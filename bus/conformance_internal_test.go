package bus

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"

	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/bus/memory"
	"github.com/busline/busline/internal/testserver"
)

// Watermill's universal Pub/Sub suite against the publisher and subscriber
// pair the bus builds for each broker: the broker's publisher with the bus's
// decorators, and the broker's subscriber behind the bus's drain wrapper.
// The adapters' own packages run the full suite on the bare adapters; here
// the slow, message-heavy cases are shortened (ForceShort) for Kafka and
// RabbitMQ on a developer's machine, and run at full size when CI (or
// BUSLINE_CONFORMANCE_FULL) is set: once per CI run.

// fullConformance reports whether the Kafka and RabbitMQ suites run at
// full size.
func fullConformance() bool {
	return os.Getenv("CI") != "" || os.Getenv("BUSLINE_CONFORMANCE_FULL") != ""
}

// pair returns the bus's publisher and a subscriber in group as Handle
// builds them.
func (b *Bus) pair(t *testing.T, group string) (message.Publisher, message.Subscriber) {
	sub, err := b.subscriber(group, handlerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return b.pub, sub
}

func TestConformanceMemory(t *testing.T) {
	// The suite publishes up to 5,000 messages before it subscribes.
	b, err := New(Config{Memory: memory.Config{Buffer: 10000}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(context.Background()) })
	shared := func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
		_, s := b.pair(t, group)
		return nopClosePublisher{b.pub}, s
	}
	tests.TestPubSub(t,
		tests.Features{
			ConsumerGroups:        true,
			GuaranteedOrder:       true,
			Persistent:            true, // for the broker's lifetime
			RequireSingleInstance: true,
		},
		func(t *testing.T) (message.Publisher, message.Subscriber) { return shared(t, "default") },
		shared,
	)
}

type nopClosePublisher struct{ message.Publisher }

func (nopClosePublisher) Close() error { return nil }

func TestConformanceKafka(t *testing.T) {
	addrs := testserver.Kafka(t, 1)
	newPair := func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
		b, err := New(Config{Broker: BrokerKafka, Kafka: kafka.Config{
			Brokers: addrs,
			// A member blocked on its in-flight message holds a rebalance up
			// to this long (see bus/kafka); the suite rebalances often.
			RebalanceTimeout: 3 * time.Second,
		}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close(context.Background()) })
		return b.pair(t, group)
	}
	tests.TestPubSub(t,
		tests.Features{ConsumerGroups: true, Persistent: true, GuaranteedOrder: true, ForceShort: !fullConformance()},
		func(t *testing.T) (message.Publisher, message.Subscriber) {
			return newPair(t, "conformance-"+strings.ReplaceAll(t.Name(), "/", "-"))
		},
		newPair,
	)
}

func TestConformanceAMQP(t *testing.T) {
	url := testserver.AMQPURL(t)
	var mu sync.Mutex
	topics := map[string]bool{}
	groups := map[string]bool{"default": true, DeadLetterGroup: true}
	dlq := bustest.Name("busline-conformance-dlq")
	topics[dlq] = true
	t.Cleanup(func() { deleteAMQP(t, url, topics, groups) })
	newPair := func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
		mu.Lock()
		groups[group] = true
		mu.Unlock()
		b, err := New(Config{Broker: BrokerAMQP, DeadLetterTopic: dlq, AMQP: amqp.Config{URL: url}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close(context.Background()) })
		return b.pair(t, group)
	}
	tests.TestPubSub(t,
		tests.Features{
			ConsumerGroups:                      true,
			GuaranteedOrder:                     true,
			GuaranteedOrderWithSingleSubscriber: true,
			Persistent:                          true,
			ForceShort:                          !fullConformance(),
			GenerateTopicFunc: func(tctx tests.TestContext) string {
				name := "busline-bus-conformance-" + string(tctx.TestID)
				mu.Lock()
				topics[name] = true
				mu.Unlock()
				return name
			},
		},
		func(t *testing.T) (message.Publisher, message.Subscriber) { return newPair(t, "default") },
		newPair,
	)
}

// deleteAMQP removes the exchanges and queues a test made. The suite derives
// further topics from the generated ones by suffix, so every exchange and
// queue starting with a recorded topic goes.
func deleteAMQP(t *testing.T, url string, topics, groups map[string]bool) {
	var queues, exchanges []string
	for topic := range topics {
		for _, suffix := range []string{"", "_1", "_2", "_3", "_4", "_5"} {
			for group := range groups {
				queues = append(queues, amqp.QueueName(topic+suffix, group))
			}
			exchanges = append(exchanges, amqp.ExchangeName(topic+suffix))
		}
	}
	testserver.DeleteAMQP(t, url, queues, exchanges)
}
