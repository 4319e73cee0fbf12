package amqp_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/broker"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/schema"
)

func newMessages(n int) []*message.Message {
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), fmt.Appendf(nil, "%d", i))
	}
	return msgs
}

// A batch into a queue that holds 3 messages and rejects publishes beyond
// (x-overflow reject-publish): RabbitMQ confirms the first 3 and nacks the
// other 2, and Publish names exactly those 2 in its PublishError.
func TestBatchPublishReportsExactlyTheNacked(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	b := newBroker(t, amqp.Config{})
	topic, group := tp.topic("nackbatch"), tp.group("full")
	ch := rawChannel(t)
	q := amqp.QueueName(topic, group)
	if err := ch.ExchangeDeclare(amqp.ExchangeName(topic), "fanout", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(q, true, false, false, false, amqp091.Table{
		"x-max-length": int32(3),
		"x-overflow":   "reject-publish",
	}); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(q, "", amqp.ExchangeName(topic), false, nil); err != nil {
		t.Fatal(err)
	}

	msgs := newMessages(5)
	err := b.Publisher().Publish(topic, msgs...)
	var pe *broker.PublishError
	if !errors.As(err, &pe) {
		t.Fatalf("Publish: %v, want a *PublishError", err)
	}
	if !errors.Is(err, amqp.ErrNacked) || errors.Is(err, amqp.ErrUnroutable) {
		t.Errorf("error %v: want ErrNacked and not ErrUnroutable", err)
	}
	if pe.Total != 5 || len(pe.Failed) != 2 {
		t.Fatalf("%d of %d failed (%v), want 2 of 5", len(pe.Failed), pe.Total, pe)
	}
	for i, f := range pe.Failed {
		if m := msgs[3+i]; f.UUID != m.UUID || f.Index != 3+i || !errors.Is(f.Err, amqp.ErrNacked) {
			t.Errorf("failure %d: %+v, want message %s (index %d) with ErrNacked", i, f, m.UUID, 3+i)
		}
	}
	t.Log(err)

	// The first three are the ones in the queue. (Subscribe would declare
	// the queue without its arguments, which RabbitMQ refuses.)
	for _, want := range msgs[:3] {
		d, ok, err := ch.Get(q, true)
		if err != nil || !ok {
			t.Fatalf("Get: %v, %v", ok, err)
		}
		if id := d.Headers["_watermill_message_uuid"]; id != want.UUID {
			t.Errorf("got %v, want %s", id, want.UUID)
		}
	}
}

// Messages are published mandatory: a batch to a topic no queue is bound
// to is returned by RabbitMQ, and every message of it is reported
// unroutable, not confirmed and silently dropped. With AllowUnroutable the
// same batch is confirmed.
func TestBatchPublishReportsUnroutable(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	b := newBroker(t, amqp.Config{})
	topic := tp.topic("unroutable")

	msgs := newMessages(3)
	// As the bus publishes it: the UUID is the event id, so it travels in
	// cloudEvents_id alone, and the return is matched by that header.
	msgs[1].Metadata.Set(schema.KeyID, msgs[1].UUID)
	err := b.Publisher().Publish(topic, msgs...)
	var pe *broker.PublishError
	if !errors.As(err, &pe) || !errors.Is(err, amqp.ErrUnroutable) {
		t.Fatalf("Publish to an unbound topic: %v, want a *PublishError with ErrUnroutable", err)
	}
	if len(pe.Failed) != 3 {
		t.Fatalf("%d failed, want all 3: %v", len(pe.Failed), err)
	}
	for i, f := range pe.Failed {
		if f.UUID != msgs[i].UUID || !errors.Is(f.Err, amqp.ErrUnroutable) {
			t.Errorf("failure %d: %+v, want message %s with ErrUnroutable", i, f, msgs[i].UUID)
		}
	}

	// Once a group is prepared the same topic routes.
	group := tp.group("g")
	if err := b.Prepare(bustest.Context(t, wait), topic, group); err != nil {
		t.Fatal(err)
	}
	if err := b.Publisher().Publish(topic, newMessages(3)...); err != nil {
		t.Fatalf("Publish after Prepare: %v", err)
	}

	lax := newBroker(t, amqp.Config{AllowUnroutable: true})
	if err := lax.Publisher().Publish(tp.topic("unroutable-allowed"), newMessages(3)...); err != nil {
		t.Fatalf("Publish with AllowUnroutable: %v", err)
	}
}

// A batch far larger than the publish window, published while other
// batches share the channel pool, arrives complete and in order: the
// window bounds what is in flight, and one batch uses one channel.
func TestBatchLargerThanWindowKeepsOrder(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	b := newBroker(t, amqp.Config{PublishWindow: 8, ChannelPoolSize: 2})
	ctx := bustest.Context(t, wait)
	topic, other, group := tp.topic("window"), tp.topic("window-other"), tp.group("g")
	for _, tpc := range []string{topic, other} {
		if err := b.Prepare(ctx, tpc, group); err != nil {
			t.Fatal(err)
		}
	}
	const n = 300
	msgs := newMessages(n)
	errc := make(chan error, 1)
	go func() { errc <- b.Publisher().Publish(other, newMessages(n)...) }()
	if err := b.Publisher().Publish(topic, msgs...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("concurrent Publish: %v", err)
	}
	if d := depth(t, b, topic, group); d != n {
		t.Fatalf("queue depth %d after Publish returned, want %d: Publish returned before every confirm", d, n)
	}

	_, got := subscribe(t, ctx, b, group, topic)
	for i, want := range msgs {
		m := receive(t, got)
		if m.UUID != want.UUID {
			t.Fatalf("message %d: %s, want %s (batch order)", i, m.UUID, want.UUID)
		}
		m.Ack()
	}
}

// Publish on a closed broker fails every message with ErrClosed.
func TestPublishAfterCloseNamesEveryMessage(t *testing.T) {
	t.Parallel()
	b := newBroker(t, amqp.Config{})
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	msgs := newMessages(2)
	err := b.Publisher().Publish("t", msgs...)
	var pe *broker.PublishError
	if !errors.As(err, &pe) || !errors.Is(err, broker.ErrClosed) || len(pe.Failed) != 2 {
		t.Fatalf("Publish after Close: %v, want a PublishError of both with ErrClosed", err)
	}
}

// When RabbitMQ closes a publishing channel because the topic's exchange
// was deleted (404), the failure says so, and the next Publish declares
// the exchange again instead of failing the same way until the connection
// is replaced.
func TestPublishRecoversFromDeletedExchange(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	b := newBroker(t, amqp.Config{})
	ctx := bustest.Context(t, wait)
	topic, group := tp.topic("deleted"), tp.group("g")
	if err := b.Prepare(ctx, topic, group); err != nil {
		t.Fatal(err)
	}
	if err := b.Publisher().Publish(topic, newMessages(1)...); err != nil {
		t.Fatal(err)
	}
	if err := rawChannel(t).ExchangeDelete(amqp.ExchangeName(topic), false, false); err != nil {
		t.Fatal(err)
	}

	err := b.Publisher().Publish(topic, newMessages(1)...)
	var ae *amqp091.Error
	if !errors.Is(err, amqp.ErrChannelClosed) || !errors.As(err, &ae) || ae.Code != amqp091.NotFound {
		t.Fatalf("Publish to a deleted exchange: %v, want ErrChannelClosed with RabbitMQ's 404", err)
	}
	// Declared again, but the group's queue lost its binding with the
	// exchange: unroutable, not a closed channel.
	if err := b.Publisher().Publish(topic, newMessages(1)...); !errors.Is(err, amqp.ErrUnroutable) {
		t.Fatalf("Publish after the failure: %v, want ErrUnroutable (the exchange declared again)", err)
	}
	if err := b.Prepare(ctx, topic, group); err != nil {
		t.Fatal(err)
	}
	if err := b.Publisher().Publish(topic, newMessages(1)...); err != nil {
		t.Fatalf("Publish after Prepare: %v", err)
	}
}
