package amqp_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/bustest"
)

// With Concurrency N a subscription hands out N messages before any is
// acked, and never more than N unsettled: each handler blocks until the N
// of its round have started, then acks. Prefetch is large enough that
// more deliveries are at hand all the time.
func TestConcurrencyRunsNAtOnce(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	const n, rounds = 4, 3
	b := newBroker(t, amqp.Config{Concurrency: n, Prefetch: n * rounds})
	ctx := bustest.Context(t, wait)
	topic, group := tp.topic("concurrency"), tp.group("g")
	if err := b.Prepare(ctx, topic, group); err != nil {
		t.Fatal(err)
	}
	if err := b.Publisher().Publish(topic, newMessages(n*rounds)...); err != nil {
		t.Fatal(err)
	}
	_, msgs := subscribe(t, ctx, b, group, topic)

	var inflight, peak atomic.Int64
	barriers := make([]chan struct{}, rounds)
	for i := range barriers {
		barriers[i] = make(chan struct{})
	}
	var wg sync.WaitGroup
	for i := range n * rounds {
		m := receive(t, msgs)
		cur := inflight.Add(1)
		for p := peak.Load(); cur > p && !peak.CompareAndSwap(p, cur); p = peak.Load() {
		}
		if cur > n {
			t.Fatalf("%d messages unsettled at once, want at most %d", cur, n)
		}
		round := i / n
		if i%n == n-1 {
			close(barriers[round]) // the N of this round have started
		}
		wg.Go(func() {
			<-barriers[round]
			inflight.Add(-1)
			m.Ack()
		})
	}
	wg.Wait()
	if p := peak.Load(); p != n {
		t.Errorf("peak %d unsettled, want %d", p, n)
	}
}

// A delivery is acked only when its handler acks it: with Concurrency 3,
// three messages are in the handlers' hands, one of them is acked, and
// closing the subscriber puts the other two and the prefetched rest back
// in the queue: exactly one message left it.
func TestConcurrencyAcksOnlyAfterHandler(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	const n, total = 3, 8
	b := newBroker(t, amqp.Config{Concurrency: n, Prefetch: n})
	ctx := bustest.Context(t, wait)
	topic, group := tp.topic("ackafter"), tp.group("g")
	if err := b.Prepare(ctx, topic, group); err != nil {
		t.Fatal(err)
	}
	if err := b.Publisher().Publish(topic, newMessages(total)...); err != nil {
		t.Fatal(err)
	}
	sub, msgs := subscribe(t, ctx, b, group, topic)
	var held []*message.Message
	for range n {
		held = append(held, receive(t, msgs))
	}
	settle := func(want int, what string) {
		eventually(t, what, func() (bool, string) {
			d := depth(t, b, topic, group)
			return d == want, fmt.Sprintf("depth %d, want %d", d, want)
		})
	}
	// Nothing acked: the queue keeps all but the n prefetched ready.
	settle(total-n, "n held, none acked")
	held[0].Ack()
	// One acked: RabbitMQ sends one more in its place.
	settle(total-n-1, "one acked")
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	// The unacked ones are back: only the acked message left the queue.
	settle(total-1, "after Close")
}
