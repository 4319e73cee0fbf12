package amqp_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/internal/testserver"
)

// wait bounds every wait of a test for a message or a condition.
const wait = 15 * time.Second

// newBroker returns a broker on the test RabbitMQ, closed when the test
// ends. cfg.URL is filled in.
func newBroker(t testing.TB, cfg amqp.Config) *amqp.Broker {
	t.Helper()
	cfg.URL = testserver.AMQPURL(t)
	b, err := amqp.New(cfg, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

// topology records exchanges and queues a test creates and deletes them
// when the test ends (after the brokers, whose cleanups run first).
type topology struct {
	mu     sync.Mutex
	topics map[string]bool
	groups map[string]bool
	queues map[string]bool
}

func newTopology(t testing.TB) *topology {
	t.Helper()
	url := testserver.AMQPURL(t)
	tp := &topology{topics: map[string]bool{}, groups: map[string]bool{}, queues: map[string]bool{}}
	t.Cleanup(func() {
		tp.mu.Lock()
		defer tp.mu.Unlock()
		var queues, exchanges []string
		for q := range tp.queues {
			queues = append(queues, q)
		}
		for topic := range tp.topics {
			for group := range tp.groups {
				queues = append(queues, amqp.QueueName(topic, group))
			}
			exchanges = append(exchanges, amqp.ExchangeName(topic))
		}
		testserver.DeleteAMQP(t, url, queues, exchanges)
	})
	return tp
}

// topic returns a new unique topic, and deletes it and its groups' queues
// when the test ends.
func (tp *topology) topic(prefix string) string {
	name := bustest.Name(prefix)
	tp.addTopic(name)
	return name
}

func (tp *topology) addTopic(name string) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	tp.topics[name] = true
}

// group returns a consumer group name, whose queues are deleted when the
// test ends.
func (tp *topology) group(name string) string {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	tp.groups[name] = true
	return name
}

// queue records one more queue to delete when the test ends, and returns
// its name.
func (tp *topology) queue(name string) string {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	tp.queues[name] = true
	return name
}

// rawChannel opens a plain amqp091-go channel, closed when the test ends.
func rawChannel(t testing.TB) *amqp091.Channel {
	t.Helper()
	conn, err := amqp091.Dial(testserver.AMQPURL(t))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("channel: %v", err)
	}
	return ch
}

// receive returns the next message of ch, failing the test after wait.
func receive(t testing.TB, ch <-chan *message.Message) *message.Message {
	t.Helper()
	return receiveWithin(t, ch, wait)
}

// receiveWithin returns the next message of ch, failing the test after d.
func receiveWithin(t testing.TB, ch <-chan *message.Message, d time.Duration) *message.Message {
	t.Helper()
	select {
	case m, ok := <-ch:
		if !ok {
			t.Fatal("messages channel closed")
		}
		return m
	case <-time.After(d):
		t.Fatal("no message within", d)
	}
	return nil
}

// eventually polls cond until it holds, failing the test after wait. It
// waits for RabbitMQ's view of a queue to settle, which nothing signals.
func eventually(t testing.TB, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(wait)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %s after %v", what, state, wait)
		}
		<-tick.C
	}
}

// depth is b.QueueDepth, failing the test on error.
func depth(t testing.TB, b *amqp.Broker, topic, group string) int {
	t.Helper()
	n, err := b.QueueDepth(context.Background(), topic, group)
	if err != nil {
		t.Fatalf("QueueDepth: %v", err)
	}
	return n
}

// subscribe makes a subscriber of b in group and subscribes it to topic,
// failing the test on an error.
func subscribe(t testing.TB, ctx context.Context, b *amqp.Broker, group, topic string) (message.Subscriber, <-chan *message.Message) {
	t.Helper()
	sub, err := b.Subscriber(group)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := sub.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	return sub, ch
}
