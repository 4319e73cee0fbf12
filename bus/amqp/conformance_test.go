package amqp_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"

	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/bustest"
)

// TestPubSubConformance runs Watermill's universal Pub/Sub suite against the
// broker's publisher and subscribers, with the nack-delay wrapper in place
// (a short delay, so the nack-heavy tests stay fast). Every constructor
// call is a broker of its own, as if a separate process.
//
// Features, as watermill-amqp declares them for its durable pub/sub:
// consumer groups (a queue per group), guaranteed order with a single
// subscriber (one queue consumed one delivery at a time; a nacked delivery
// goes back to the head of the queue), persistent (durable queues); not
// exactly once (a delivery in flight at Close comes again). Reconnection
// holds too: TestInteropConformanceReconnect runs the suite's
// TestReconnect with the broker behind a proxy that cuts connections
// (here it would disturb the suite's other tests, which run in parallel).
func TestPubSubConformance(t *testing.T) {
	tp := newTopology(t)
	tp.group(defaultGroup)
	constructor := func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
		b := newBroker(t, amqp.Config{})
		sub, err := b.Subscriber(tp.group(group))
		if err != nil {
			t.Fatal(err)
		}
		return recordingPublisher{b.Publisher(), tp}, recordingSubscriber{sub, tp}
	}
	tests.TestPubSub(t,
		tests.Features{
			ConsumerGroups:                      true,
			ExactlyOnceDelivery:                 false,
			GuaranteedOrder:                     true,
			GuaranteedOrderWithSingleSubscriber: true,
			Persistent:                          true,
			GenerateTopicFunc: func(tctx tests.TestContext) string {
				return "busline-conformance-" + string(tctx.TestID)
			},
		},
		func(t *testing.T) (message.Publisher, message.Subscriber) { return constructor(t, defaultGroup) },
		constructor,
	)
}

// TestInteropConformanceReconnect is the suite's TestReconnect, which the
// suite skips without a command that restarts the broker (issue 15: the
// feature holds on RabbitMQ, so claim it): 10,000 messages from 100
// publishers, publishing again after a failure, while the broker
// "restarts" twice, at a third and at half of them; every message must
// arrive. The RabbitMQ server is shared, so it is not restarted: the
// broker under test reaches it through a proxy that cuts every
// connection, which is what a restart does to the clients.
//
// It is Watermill v1.5.1's TestReconnect with two changes: the list of
// published messages is read only after every publisher is done (the
// original appends to it on a goroutine of its own and reads it without
// waiting: a data race that -race reports, and a count one short now and
// then), and a message delivered twice is counted and logged instead of
// failing the test (a cut can lose an ack: at least once; the suite's
// ExactlyOnceDelivery is not claimed).
func TestInteropConformanceReconnect(t *testing.T) {
	if testing.Short() {
		t.Skip("TestReconnect publishes 10,000 messages")
	}
	tp := newTopology(t)
	b, px := proxiedBroker(t, amqp.Config{})
	topic, group := tp.topic("reconnect-suite"), tp.group("g")
	ctx := bustest.Context(t, 2*time.Minute)
	if err := b.Prepare(ctx, topic, group); err != nil {
		t.Fatal(err)
	}
	sub, err := b.Subscriber(group)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := sub.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}

	const messagesCount, publishersCount = 10000, 100
	work := make(chan int)
	go func() {
		defer close(work)
		for i := range messagesCount {
			if i == messagesCount/3 || i == messagesCount/2 {
				px.cut()
			}
			work <- i
		}
	}()
	var (
		mu        sync.Mutex
		published = map[string]bool{}
		pubs      sync.WaitGroup
	)
	for range publishersCount {
		pubs.Go(func() {
			for range work {
				m := message.NewMessage(watermill.NewUUID(), []byte("x"))
				for b.Publisher().Publish(topic, m) != nil {
					// Down: try again, as the suite does (it waits 500ms).
					if ctx.Err() != nil {
						return
					}
					time.Sleep(50 * time.Millisecond)
				}
				mu.Lock()
				published[m.UUID] = true
				mu.Unlock()
			}
		})
	}

	received := map[string]int{}
	for missing := messagesCount; missing > 0; {
		select {
		case m := <-msgs:
			m.Ack()
			received[m.UUID]++
			if received[m.UUID] == 1 {
				missing--
			}
		case <-ctx.Done():
			t.Fatalf("%d of %d messages received", messagesCount-missing, messagesCount)
		}
	}
	pubs.Wait()
	twice := 0
	for id, n := range received {
		if !published[id] {
			t.Errorf("received %s, never published", id)
		}
		if n > 1 {
			twice++
		}
	}
	if len(published) != messagesCount {
		t.Errorf("%d messages published, want %d", len(published), messagesCount)
	}
	t.Logf("%d messages through two connection cuts, %d delivered more than once; %d connections through the proxy",
		messagesCount, twice, px.accepted.Load())
	if n := px.accepted.Load(); n < 6 {
		t.Errorf("%d connections through the proxy, want at least 6 (two cuts, each redialling both)", n)
	}
}

// defaultGroup is the group of the suite's constructor without one: a
// fixed name, so that a later constructor call reads what an earlier one
// left in the queue.
const defaultGroup = "test"

// recordingPublisher and recordingSubscriber note every topic the suite
// uses (it derives several from one name), so that the test deletes their
// exchanges and queues when it ends.
type recordingPublisher struct {
	message.Publisher
	tp *topology
}

func (p recordingPublisher) Publish(topic string, msgs ...*message.Message) error {
	p.tp.addTopic(topic)
	return p.Publisher.Publish(topic, msgs...)
}

type recordingSubscriber struct {
	message.Subscriber
	tp *topology
}

func (s recordingSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	s.tp.addTopic(topic)
	return s.Subscriber.Subscribe(ctx, topic)
}

func (s recordingSubscriber) SubscribeInitialize(topic string) error {
	s.tp.addTopic(topic)
	return s.Subscriber.(message.SubscribeInitializer).SubscribeInitialize(topic)
}
