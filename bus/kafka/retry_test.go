package kafka_test

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus/broker"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/internal/testserver"
)

// redeliverer is what Broker.Redeliverer returns.
type redeliverer = interface {
	Redeliver(ctx context.Context, msg *message.Message, delay time.Duration) error
}

// retryConfig is the broker configuration of the TestDelayedRetry tests.
func retryConfig(addrs []string, parts int32) kafka.Config {
	return kafka.Config{Brokers: addrs, Partitions: parts, SessionTimeout: 6 * time.Second}
}

// retrySetup prepares topic with parts partitions on a fresh kfake cluster
// and the retry topics of group for delays, and returns the broker, the
// topic and the redeliverer.
func retrySetup(t *testing.T, parts int32, group string, delays ...time.Duration) (*kafka.Broker, string, redeliverer) {
	t.Helper()
	b := newBroker(t, retryConfig(testserver.Kafka(t, parts), parts))
	topic := bustest.Name("retry")
	r, err := b.Redeliverer(topic, group, delays)
	if err != nil {
		t.Fatal(err)
	}
	return b, topic, r
}

// subscribeRetry subscribes a new member of group to topic and its retry
// topics for delays.
func subscribeRetry(t *testing.T, ctx context.Context, b *kafka.Broker, group, topic string, delays ...time.Duration) (message.Subscriber, <-chan *message.Message) {
	t.Helper()
	return subscribeWith(t, ctx, b, group, topic, broker.SubscriberOptions{RetryDelays: delays})
}

// waiting is a record waiting in a retry topic, held by a subscription.
type waiting struct {
	sub  message.Subscriber
	ch   <-chan *message.Message
	orig *message.Message
	due  time.Time // no earlier than this may it come back
}

// holdOne publishes a keyed message on topic, subscribes a member of
// group with a retry tier of delay, receives the message, redelivers it
// with delay and acks it, and waits until the member holds it.
func holdOne(t *testing.T, ctx context.Context, b *kafka.Broker, r redeliverer, group, topic string, delay time.Duration) waiting {
	t.Helper()
	orig := message.NewMessage(watermill.NewUUID(), []byte("x"))
	orig.Metadata.Set("ce_partitionkey", "key-7")
	if err := b.Publisher().Publish(topic, orig); err != nil {
		t.Fatal(err)
	}
	sub, ch := subscribeRetry(t, ctx, b, group, topic, delay)
	m := next(t, ch, 30*time.Second)
	if m.UUID != orig.UUID {
		t.Fatalf("received %s, want %s", m.UUID, orig.UUID)
	}
	called, _ := redeliver(t, r, m, delay)
	waitStats(t, b, "the record is held", func(st kafka.ConsumerStats) bool { return st.Held == 1 })
	return waiting{sub: sub, ch: ch, orig: orig, due: called.Add(delay)}
}

// next returns the next message of ch, or fails the test when none comes
// within d (a guard against a hang, not a measurement).
func next(t *testing.T, ch <-chan *message.Message, d time.Duration) *message.Message {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case m, ok := <-ch:
		if !ok {
			t.Fatal("channel closed")
		}
		return m
	case <-timer.C:
		t.Fatalf("no message within %v", d)
		return nil
	}
}

// redeliver moves m to its retry topic of delay and acks it, as the retry
// middleware does, and returns the times just before the call (nothing may
// come back earlier than that plus delay) and after it returned.
func redeliver(t *testing.T, r redeliverer, m *message.Message, delay time.Duration) (called, returned time.Time) {
	t.Helper()
	called = time.Now()
	if err := r.Redeliver(context.Background(), m, delay); err != nil {
		t.Fatalf("Redeliver: %v", err)
	}
	returned = time.Now()
	m.Ack()
	return called, returned
}

// A redelivered message comes back with its UUID, payload and metadata,
// on the handler's channel, no earlier than its delay. How much later it
// comes is logged, not asserted (the house rules forbid timed assertions;
// the guard is delay+30s).
func TestDelayedRetryTiming(t *testing.T) {
	for _, delay := range []time.Duration{time.Second, 10 * time.Second} {
		t.Run(delay.String(), func(t *testing.T) {
			t.Parallel()
			const group = "svc.h"
			b, topic, r := retrySetup(t, 1, group, time.Second, 10*time.Second)
			ctx := bustest.Context(t, delay+60*time.Second)
			_, ch := subscribeRetry(t, ctx, b, group, topic, time.Second, 10*time.Second)
			orig := message.NewMessage(watermill.NewUUID(), []byte("payload"))
			orig.Metadata.Set("ce_partitionkey", "k1")
			orig.Metadata.Set("x", "y")
			if err := b.Publisher().Publish(topic, orig); err != nil {
				t.Fatal(err)
			}
			m := next(t, ch, 30*time.Second)
			called, returned := redeliver(t, r, m, delay)
			back := next(t, ch, delay+30*time.Second)
			got := time.Now()
			back.Ack()
			if got.Before(called.Add(delay)) {
				t.Errorf("handed out %v after Redeliver was called, before the delay %v", got.Sub(called), delay)
			}
			if back.UUID != orig.UUID || string(back.Payload) != "payload" || back.Metadata.Get("x") != "y" ||
				back.Metadata.Get("ce_partitionkey") != "k1" {
				t.Errorf("came back as %s %q %v", back.UUID, back.Payload, back.Metadata)
			}
			ri, _ := kafka.RecordFromContext(back.Context())
			if want := kafka.RetryTopic(topic, group, delay); ri.Topic != want {
				t.Errorf("came from %s, want %s", ri.Topic, want)
			}
			due, err := strconv.ParseInt(back.Metadata.Get("busline_retry_due"), 10, 64)
			if err != nil || time.UnixMilli(due).Before(called.Add(delay)) {
				t.Fatalf("busline_retry_due %q, want at least %v", back.Metadata.Get("busline_retry_due"), called.Add(delay))
			}
			t.Logf("delay %v: Redeliver took %v; handed out %v after it returned, %v after the due time",
				delay, returned.Sub(called), got.Sub(returned), got.Sub(time.UnixMilli(due)))
		})
	}
}

// While a record waits 5s in a retry topic, the consumer is free: 10,000
// records of the topic's one partition, published behind the failed one,
// all complete before it comes back ("partition" ordering, where an
// in-process retry would hold the partition).
func TestDelayedRetryFreesConsumer(t *testing.T) {
	const group, n, delay = "g", 10000, 5 * time.Second
	b, topic, r := retrySetup(t, 1, group, delay)
	ctx := bustest.Context(t, 90*time.Second)
	first := message.NewMessage(watermill.NewUUID(), []byte("first"))
	if err := b.Publisher().Publish(topic, first); err != nil {
		t.Fatal(err)
	}
	publishN(t, b.Publisher(), topic, n)
	_, ch := subscribeRetry(t, ctx, b, group, topic, delay)
	m := next(t, ch, 30*time.Second)
	if m.UUID != first.UUID {
		t.Fatalf("first message %s, want %s", m.UUID, first.UUID)
	}
	called, _ := redeliver(t, r, m, delay)
	done := 0
	for {
		m := next(t, ch, 60*time.Second)
		m.Ack()
		if m.UUID == first.UUID {
			if done < n {
				t.Fatalf("the waiting record came back after %d of the %d others", done, n)
			}
			if got := time.Since(called); got < delay {
				t.Errorf("came back after %v, before its delay", got)
			}
			return
		}
		done++
		if done == n {
			t.Logf("%d records done %v after the redelivery, while the record waited", n, time.Since(called))
		}
	}
}

// While a record waits in a retry topic, held by member A (of broker a), a
// second member B (of another broker on the same cluster) joins the group
// and gets some partitions, and then one of the two leaves: the record is
// handed out exactly once, after its due time, whether the member holding
// it leaves (its partitions go to the other, which reads the record again:
// it was neither handed out nor committed) or stays (it gets back the
// partitions it gave away, which it may have paused: spring-kafka #2525).
func TestDelayedRetryRebalance(t *testing.T) {
	for _, firstLeaves := range []bool{true, false} {
		name := "second_leaves"
		if firstLeaves {
			name = "first_leaves"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			const group, delay = "g", 10 * time.Second
			addrs := testserver.Kafka(t, 4)
			b := newBroker(t, retryConfig(addrs, 4))
			topic := bustest.Name("retry")
			r, err := b.Redeliverer(topic, group, []time.Duration{delay})
			if err != nil {
				t.Fatal(err)
			}
			ctx := bustest.Context(t, 120*time.Second)
			w := holdOne(t, ctx, b, r, group, topic, delay)
			subA, chA, orig, due := w.sub, w.ch, w.orig, w.due

			// Everything each member hands out is counted by its reader.
			type got struct {
				member string
				uuid   string
				at     time.Time
			}
			seen := make(chan got, 16)
			readers := make(chan struct{}, 2)
			read := func(member string, ch <-chan *message.Message) {
				defer func() { readers <- struct{}{} }()
				for m := range ch {
					m.Ack()
					seen <- got{member, m.UUID, time.Now()}
				}
			}
			go read("A", chA)
			b2 := newBroker(t, retryConfig(addrs, 4))
			subB, chB := subscribeRetry(t, ctx, b2, group, topic, delay)
			go read("B", chB)
			waitStats(t, b2, "B is assigned partitions", func(st kafka.ConsumerStats) bool { return st.AssignedPartitions > 0 })
			for _, st := range b.ConsumerStats() {
				t.Logf("B joined; A holds %d record(s) and %d partitions", st.Held, st.AssignedPartitions)
			}
			leaver, stayer := subB, subA
			if firstLeaves {
				leaver, stayer = subA, subB
			}
			if err := leaver.Close(); err != nil {
				t.Fatal(err)
			}
			t.Logf("member left %v before the due time", due.Sub(time.Now()))

			var g got
			guard := time.NewTimer(delay + 60*time.Second)
			defer guard.Stop()
			select {
			case g = <-seen:
			case <-guard.C:
				t.Fatal("nothing handed out within the delay and 60s")
			}
			if g.uuid != orig.UUID {
				t.Fatalf("member %s handed out %s, want %s", g.member, g.uuid, orig.UUID)
			}
			if g.at.Before(due) {
				t.Errorf("handed out by %s %v before its due time", g.member, due.Sub(g.at))
			}
			t.Logf("handed out by %s, %v after its due time", g.member, g.at.Sub(due))
			// Exactly once: close the stayer, which commits and closes
			// its channel; once both readers are done, nothing else
			// may have come.
			if err := stayer.Close(); err != nil {
				t.Fatal(err)
			}
			<-readers
			<-readers
			select {
			case g := <-seen:
				t.Errorf("handed out again by %s: %s", g.member, g.uuid)
			default:
			}
		})
	}
}

// Closing a subscriber while a record waits in a retry topic does not wait
// for its due time; the record was not committed, and a subscriber
// started again in the group hands it out, after its due time.
func TestDelayedRetryClose(t *testing.T) {
	const group, delay = "g", 10 * time.Second
	b, topic, r := retrySetup(t, 1, group, delay)
	ctx := bustest.Context(t, 90*time.Second)
	w := holdOne(t, ctx, b, r, group, topic, delay)
	sub, ch, orig, due := w.sub, w.ch, w.orig, w.due
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	if closed := time.Now(); !closed.Before(due) {
		t.Fatalf("Close returned %v after the due time: it waited for the record", closed.Sub(due))
	}
	for m := range ch {
		t.Errorf("handed out while closing: %s", m.UUID)
	}

	_, ch = subscribeRetry(t, ctx, b, group, topic, delay)
	back := next(t, ch, delay+60*time.Second)
	at := time.Now()
	back.Ack()
	if back.UUID != orig.UUID {
		t.Fatalf("handed out %s, want %s", back.UUID, orig.UUID)
	}
	if at.Before(due) {
		t.Errorf("handed out %v before its due time", due.Sub(at))
	}
}

// waitStats waits until a subscription of b reports stats for which ok
// holds, polling ConsumerStats (what could signal it is inside the
// subscription); what names the condition.
func waitStats(t *testing.T, b *kafka.Broker, what string, ok func(kafka.ConsumerStats) bool) {
	t.Helper()
	waitCond(t, what, func() bool { return slices.ContainsFunc(b.ConsumerStats(), ok) })
}

// waitCond polls ok until it holds, and fails the test when it does not
// within 30s (a guard against a hang, not a measurement).
func waitCond(t *testing.T, what string, ok func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	guard := time.NewTimer(30 * time.Second)
	defer guard.Stop()
	for !ok() {
		select {
		case <-tick.C:
		case <-guard.C:
			t.Fatalf("not within 30s: %s", what)
		}
	}
}

// Redeliverer refuses what cannot be a tier, and Redeliver a delay that is
// not one.
func TestDelayedRetryInvalid(t *testing.T) {
	b, topic, r := retrySetup(t, 1, "g", time.Second)
	for _, delays := range [][]time.Duration{nil, {0}, {-time.Second}, {time.Microsecond}, {time.Second, time.Second}} {
		if _, err := b.Redeliverer(topic, "g", delays); err == nil {
			t.Errorf("Redeliverer(%v) succeeded", delays)
		}
	}
	if err := r.Redeliver(context.Background(), message.NewMessage("u", nil), 2*time.Second); err == nil {
		t.Error("Redeliver with an undeclared delay succeeded")
	}
	if _, err := b.SubscriberWith("g", broker.SubscriberOptions{RetryDelays: []time.Duration{time.Second}, Transactions: true}); err == nil {
		t.Error("SubscriberWith transactions and retry delays succeeded")
	}
	if got := kafka.RetryTopic("orders", "svc.h", 10*time.Second); got != "orders.svc.h.retry.10s" {
		t.Errorf("RetryTopic = %s", got)
	}
}

// BenchmarkDelayedRetryLateness measures how late a redelivered record is
// handed out after its due time (the precision TestDelayedRetryTiming
// cannot assert): each op redelivers one record with a 200ms delay and
// waits for it. late-ms is the mean and max-late-ms the worst lateness
// against the busline_retry_due header; ns/op includes the delay.
func BenchmarkDelayedRetryLateness(b *testing.B) {
	const group, delay = "g", 200 * time.Millisecond
	kb, err := kafka.New(retryConfig(testserver.Kafka(b, 1), 1), watermill.NopLogger{})
	if err != nil {
		b.Fatal(err)
	}
	defer kb.Close()
	topic := bustest.Name("late")
	r, err := kb.Redeliverer(topic, group, []time.Duration{delay})
	if err != nil {
		b.Fatal(err)
	}
	ctx := bustest.Context(b, 10*time.Minute)
	_, ch := subscribeWith(b, ctx, kb, group, topic, broker.SubscriberOptions{RetryDelays: []time.Duration{delay}})
	m := message.NewMessage(watermill.NewUUID(), []byte("x"))
	var sum, worst time.Duration
	n := 0
	b.ReportAllocs()
	for b.Loop() {
		if err := r.Redeliver(context.Background(), m, delay); err != nil {
			b.Fatal(err)
		}
		back := <-ch
		at := time.Now()
		back.Ack()
		due, err := strconv.ParseInt(back.Metadata.Get("busline_retry_due"), 10, 64)
		if err != nil {
			b.Fatal(err)
		}
		late := at.Sub(time.UnixMilli(due))
		sum += late
		worst = max(worst, late)
		n++
	}
	b.ReportMetric(float64(sum.Microseconds())/float64(n)/1000, "late-ms")
	b.ReportMetric(float64(worst.Microseconds())/1000, "max-late-ms")
}

// With InitialOffset "newest", a retry topic is still read from its start:
// a record redelivered before the group's member ever joined (as after a
// member that died holding it, or a first deploy) is not skipped.
func TestDelayedRetryNewestStillReadsRetryTopicsFromTheStart(t *testing.T) {
	cfg := retryConfig(testserver.Kafka(t, 1), 1)
	cfg.InitialOffset = "Newest" // any case
	b := newBroker(t, cfg)
	topic, group := bustest.Name("retry-newest"), bustest.Name("g")
	const delay = 100 * time.Millisecond
	r, err := b.Redeliverer(topic, group, []time.Duration{delay})
	if err != nil {
		t.Fatal(err)
	}
	orig := message.NewMessage(watermill.NewUUID(), []byte("x"))
	redeliver(t, r, orig, delay)
	ctx := bustest.Context(t, time.Minute)
	_, ch := subscribeRetry(t, ctx, b, group, topic, delay)
	if m := next(t, ch, 30*time.Second); m.UUID != orig.UUID {
		t.Fatalf("received %s, want the redelivered %s", m.UUID, orig.UUID)
	}
}

// A subscription reads the retry topics of delays its handler no longer
// has: a record waiting in the tier of an earlier configuration comes back
// when the delays changed, and when they were removed, and is committed
// once handled (its tier's lag drops to 0). With InitialOffset "newest" too:
// the group never committed on that tier (the earlier configuration read
// from the oldest offset), which must not mean reading it from its end.
func TestDelayedRetryReadsTiersOfEarlierDelays(t *testing.T) {
	const old, current = 40 * time.Millisecond, 70 * time.Millisecond
	for _, tc := range []struct {
		name   string
		delays []time.Duration
		newest bool
	}{
		{"changed", []time.Duration{current}, false},
		{"removed", nil, false},
		{"changed_newest", []time.Duration{current}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			group := bustest.Name("g")
			addrs := testserver.Kafka(t, 2)
			b := newBroker(t, retryConfig(addrs, 2))
			topic := bustest.Name("retry")
			r, err := b.Redeliverer(topic, group, []time.Duration{old}) // the earlier configuration's tier
			if err != nil {
				t.Fatal(err)
			}
			orig := message.NewMessage(watermill.NewUUID(), []byte("x"))
			orig.Metadata.Set("ce_partitionkey", "key-1")
			redeliver(t, r, orig, old)

			if tc.newest {
				cfg := retryConfig(addrs, 2)
				cfg.InitialOffset = "newest"
				b = newBroker(t, cfg)
			}
			ctx := bustest.Context(t, time.Minute)
			_, ch := subscribeRetry(t, ctx, b, group, topic, tc.delays...)
			m := next(t, ch, 30*time.Second)
			if m.UUID != orig.UUID {
				t.Fatalf("received %s, want %s from the tier of %v", m.UUID, orig.UUID, old)
			}
			tier := kafka.RetryTopic(topic, group, old)
			if info, _ := kafka.RecordFromContext(m.Context()); info.Topic != tier {
				t.Errorf("came from %q, want %q", info.Topic, tier)
			}
			m.Ack()
			waitCond(t, "the old tier's record is committed", func() bool {
				lag, err := b.Lag(context.Background(), group)
				if err != nil {
					return false
				}
				parts, ok := lag[tier]
				if !ok {
					return false
				}
				for _, l := range parts {
					if l != 0 {
						return false
					}
				}
				return true
			})
		})
	}
}
