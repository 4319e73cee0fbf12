package amqp_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"

	"github.com/busline/busline/bus/amqp"
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
// exactly once (a delivery in flight at Close comes again).
func TestPubSubConformance(t *testing.T) {
	tp := newTopology(t)
	tp.group(defaultGroup)
	constructor := func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
		b := newBroker(t, amqp.Config{NackDelay: 10 * time.Millisecond})
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
