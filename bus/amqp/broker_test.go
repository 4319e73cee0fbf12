package amqp_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/broker"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/internal/testserver"
)

func TestNewRejectsInvalidConfig(t *testing.T) {
	t.Parallel()
	_, err := amqp.New(amqp.Config{URL: "http://x", Prefetch: -1, Concurrency: -1}, nil)
	if err == nil {
		t.Fatal("New accepted an invalid config")
	}
	for _, want := range []string{"scheme", "prefetch", "concurrency"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

// A message published after Prepare and before anyone subscribes waits in
// the group's durable queue, and is delivered in order once the group
// subscribes.
func TestPrepareKeepsMessagesPublishedBeforeSubscribe(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	b := newBroker(t, amqp.Config{})
	ctx := bustest.Context(t, wait)
	topic, group := tp.topic("prepare"), tp.group("g")

	if err := b.Prepare(ctx, topic, group); err != nil {
		t.Fatal(err)
	}
	if err := b.Prepare(ctx, topic, group); err != nil {
		t.Fatalf("second Prepare: %v", err)
	}
	const n = 20
	var ids []string
	for i := range n {
		m := message.NewMessage(watermill.NewUUID(), fmt.Appendf(nil, "%d", i))
		ids = append(ids, m.UUID)
		if err := b.Publisher().Publish(topic, m); err != nil {
			t.Fatal(err)
		}
	}
	if got := depth(t, b, topic, group); got != n {
		t.Fatalf("queue depth %d after %d confirmed publishes, want %d", got, n, n)
	}

	_, msgs := subscribe(t, ctx, b, group, topic)
	for i, id := range ids {
		m := receive(t, msgs)
		if m.UUID != id {
			t.Fatalf("message %d: UUID %s, want %s (queue order)", i, m.UUID, id)
		}
		m.Ack()
	}
	eventually(t, "queue drained", func() (bool, string) {
		d := depth(t, b, topic, group)
		return d == 0, fmt.Sprintf("depth %d", d)
	})
}

// Publish waits for the broker's confirm and fails when the broker refuses
// the message: here a queue bound to the topic is full and rejects
// publishes (x-overflow reject-publish), so RabbitMQ nacks the second
// message. Without publisher confirms Publish would return nil and the
// message would be lost.
func TestPublishFailsWhenBrokerNacks(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	b := newBroker(t, amqp.Config{})
	topic, group := tp.topic("confirm"), tp.group("full")
	if err := b.Prepare(bustest.Context(t, wait), topic, "unused"); err != nil {
		t.Fatal(err)
	}
	tp.group("unused")
	ch := rawChannel(t)
	q := amqp.QueueName(topic, group)
	if _, err := ch.QueueDeclare(q, true, false, false, false, amqp091.Table{
		"x-max-length": int32(1),
		"x-overflow":   "reject-publish",
	}); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(q, "", amqp.ExchangeName(topic), false, nil); err != nil {
		t.Fatal(err)
	}

	if err := b.Publisher().Publish(topic, message.NewMessage(watermill.NewUUID(), nil)); err != nil {
		t.Fatalf("first publish: %v", err)
	}
	if err := b.Publisher().Publish(topic, message.NewMessage(watermill.NewUUID(), nil)); err == nil {
		t.Fatal("publish into a full reject-publish queue returned nil: not confirmed")
	}
	// The pool's channel is still usable afterwards.
	if _, err := ch.QueuePurge(q, false); err != nil {
		t.Fatal(err)
	}
	if err := b.Publisher().Publish(topic, message.NewMessage(watermill.NewUUID(), nil)); err != nil {
		t.Fatalf("publish after the queue was emptied: %v", err)
	}
}

// Subscriptions of one group compete: together they get each message;
// every group gets all of them.
func TestConsumerGroups(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	b := newBroker(t, amqp.Config{Prefetch: 1})
	ctx := bustest.Context(t, wait)
	topic, g1, g2 := tp.topic("groups"), tp.group("g1"), tp.group("g2")
	for _, g := range []string{g1, g2} {
		if err := b.Prepare(ctx, topic, g); err != nil {
			t.Fatal(err)
		}
	}

	const n = 30
	want := map[string]bool{}
	for range n {
		m := message.NewMessage(watermill.NewUUID(), []byte("x"))
		want[m.UUID] = true
		if err := b.Publisher().Publish(topic, m); err != nil {
			t.Fatal(err)
		}
	}

	subscribe := func(group string) <-chan *message.Message {
		s, err := b.Subscriber(group)
		if err != nil {
			t.Fatal(err)
		}
		c, err := s.Subscribe(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a1, a2, c := subscribe(g1), subscribe(g1), subscribe(g2)

	got1, got2 := map[string]int{}, map[string]int{}
	for len(got1) < n || len(got2) < n {
		select {
		case m := <-a1:
			got1[m.UUID]++
			m.Ack()
		case m := <-a2:
			got1[m.UUID]++
			m.Ack()
		case m := <-c:
			got2[m.UUID]++
			m.Ack()
		case <-ctx.Done():
			t.Fatalf("group 1 got %d, group 2 got %d of %d", len(got1), len(got2), n)
		}
	}
	for id := range want {
		if got1[id] != 1 || got2[id] != 1 {
			t.Errorf("message %s: group 1 got it %d times, group 2 %d times", id, got1[id], got2[id])
		}
	}
}

// A subscription holds at most Prefetch unacknowledged deliveries: with
// one message in the reader's hands and none acked, the queue keeps all
// but Prefetch of them ready.
func TestPrefetchBoundsUnackedDeliveries(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	const prefetch, n = 3, 10
	b := newBroker(t, amqp.Config{Prefetch: prefetch})
	ctx := bustest.Context(t, wait)
	topic, group := tp.topic("prefetch"), tp.group("g")
	if err := b.Prepare(ctx, topic, group); err != nil {
		t.Fatal(err)
	}
	for range n {
		if err := b.Publisher().Publish(topic, message.NewMessage(watermill.NewUUID(), nil)); err != nil {
			t.Fatal(err)
		}
	}
	_, msgs := subscribe(t, ctx, b, group, topic)
	first := receive(t, msgs)
	eventually(t, "prefetch taken", func() (bool, string) {
		d := depth(t, b, topic, group)
		if d < n-prefetch {
			t.Fatalf("queue depth %d: the consumer holds %d deliveries, more than prefetch %d", d, n-d, prefetch)
		}
		return d == n-prefetch, fmt.Sprintf("depth %d", d)
	})
	first.Ack()
	eventually(t, "one more taken after an ack", func() (bool, string) {
		d := depth(t, b, topic, group)
		if d < n-prefetch-1 {
			t.Fatalf("queue depth %d after one ack: the consumer holds more than prefetch %d", d, prefetch)
		}
		return d == n-prefetch-1, fmt.Sprintf("depth %d", d)
	})
}

// A nacked delivery comes back (at once: the bus's stack waits before it
// nacks).
func TestNackRedelivers(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	b := newBroker(t, amqp.Config{})
	ctx := bustest.Context(t, wait)
	topic, group := tp.topic("nack"), tp.group("g")
	if err := b.Prepare(ctx, topic, group); err != nil {
		t.Fatal(err)
	}
	_, msgs := subscribe(t, ctx, b, group, topic)
	sent := message.NewMessage(watermill.NewUUID(), []byte("x"))
	if err := b.Publisher().Publish(topic, sent); err != nil {
		t.Fatal(err)
	}

	m := receive(t, msgs)
	if m.Metadata[amqp.KeyRedelivered] != "false" {
		t.Errorf("first delivery: %s = %q, want false", amqp.KeyRedelivered, m.Metadata[amqp.KeyRedelivered])
	}
	for range 2 {
		m.Nack()
		m = receive(t, msgs)
		if m.UUID != sent.UUID {
			t.Fatalf("redelivered %s, want %s", m.UUID, sent.UUID)
		}
		if m.Metadata[amqp.KeyRedelivered] != "true" {
			t.Errorf("redelivery: %s = %q, want true", amqp.KeyRedelivered, m.Metadata[amqp.KeyRedelivered])
		}
	}
	m.Ack()
}

// Closing a subscriber right after a nack returns at once and leaves the
// delivery in the queue.
func TestCloseAfterNack(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	b := newBroker(t, amqp.Config{})
	ctx := bustest.Context(t, wait)
	topic, group := tp.topic("nackclose"), tp.group("g")
	if err := b.Prepare(ctx, topic, group); err != nil {
		t.Fatal(err)
	}
	if err := b.Publisher().Publish(topic, message.NewMessage(watermill.NewUUID(), nil)); err != nil {
		t.Fatal(err)
	}
	sub, msgs := subscribe(t, ctx, b, group, topic)
	receive(t, msgs).Nack()

	closed := make(chan error, 1)
	go func() { closed <- sub.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(wait):
		t.Fatal("Close blocked after a nack")
	}
	if _, open := <-msgs; open {
		t.Fatal("messages channel open after Close")
	}
	eventually(t, "nacked delivery back in the queue", func() (bool, string) {
		d := depth(t, b, topic, group)
		return d == 1, fmt.Sprintf("depth %d", d)
	})
	if _, err := sub.Subscribe(ctx, topic); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Subscribe after Close: %v, want ErrClosed", err)
	}
}

// Cancelling the Subscribe context stops fetching, lets the message in hand
// be acked, closes the channel and leaves the rest in the queue.
func TestSubscribeContextStopsFetching(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	b := newBroker(t, amqp.Config{})
	topic, group := tp.topic("stop"), tp.group("g")
	if err := b.Prepare(bustest.Context(t, wait), topic, group); err != nil {
		t.Fatal(err)
	}
	const n = 5
	for range n {
		if err := b.Publisher().Publish(topic, message.NewMessage(watermill.NewUUID(), nil)); err != nil {
			t.Fatal(err)
		}
	}
	sub, err := b.Subscriber(group)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	msgs, err := sub.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	m := receive(t, msgs)
	cancel()
	if !m.Ack() {
		t.Fatal("Ack after cancel refused")
	}
	for m := range msgs {
		t.Errorf("message %s handed out after cancel", m.UUID)
		m.Nack()
	}
	eventually(t, "the acked message gone, the rest back", func() (bool, string) {
		d := depth(t, b, topic, group)
		return d == n-1, fmt.Sprintf("depth %d", d)
	})
}

func TestQueueDepthOfUnknownQueue(t *testing.T) {
	t.Parallel()
	b := newBroker(t, amqp.Config{})
	_, err := b.QueueDepth(bustest.Context(t, wait), bustest.Name("nosuchtopic"), "g")
	if !errors.Is(err, amqp.ErrQueueNotFound) {
		t.Fatalf("QueueDepth of an unknown queue: %v, want ErrQueueNotFound", err)
	}
	// The broker stays usable after the server closed the channel.
	if err := b.Ping(bustest.Context(t, wait)); err != nil {
		t.Fatalf("Ping after a failed QueueDepth: %v", err)
	}
}

func TestPingAndClose(t *testing.T) {
	t.Parallel()
	b := newBroker(t, amqp.Config{})
	ctx := bustest.Context(t, wait)
	if err := b.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	sub, err := b.Subscriber("g")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := b.Ping(ctx); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Ping after Close: %v, want ErrClosed", err)
	}
	if _, err := b.Subscriber("g"); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Subscriber after Close: %v, want ErrClosed", err)
	}
	if _, err := sub.Subscribe(ctx, "t"); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Subscribe on a subscriber closed by Broker.Close: %v, want ErrClosed", err)
	}
	if err := b.Publisher().Publish("t", message.NewMessage(watermill.NewUUID(), nil)); err == nil {
		t.Error("Publish after Close succeeded")
	}
}

func TestRejectsEmptyNames(t *testing.T) {
	t.Parallel()
	b := newBroker(t, amqp.Config{})
	ctx := bustest.Context(t, wait)
	if _, err := b.Subscriber(""); err == nil {
		t.Error("Subscriber accepted an empty group")
	}
	if err := b.Prepare(ctx, "", "g"); err == nil {
		t.Error("Prepare accepted an empty topic")
	}
	if err := b.Prepare(ctx, "t", ""); err == nil {
		t.Error("Prepare accepted an empty group")
	}
}

// With TLS enabled, an amqp:// URL is dialled as amqps: against the
// plaintext test server the handshake fails instead of TLS being silently
// skipped.
func TestTLSIsNotSilentlySkipped(t *testing.T) {
	t.Parallel()
	url := testserver.AMQPURL(t)
	_, err := amqp.New(amqp.Config{URL: url, TLS: amqp.TLSConfig{Enabled: true, InsecureSkipVerify: true}}, nil)
	if err == nil {
		t.Fatal("New with TLS enabled connected to a plaintext server")
	}
	t.Logf("New: %v", err)
	if !strings.Contains(err.Error(), "tls") {
		t.Errorf("error %q is not a TLS handshake failure", err)
	}
}
