package middleware_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/middleware"
)

// delayedTier records what the dead-letter step hands to the delayed
// tier; fail makes Redeliver fail. The brokers' own tiers are tested
// against real brokers in package bus (TestDelayedRetry*).
type delayedTier struct {
	mu     sync.Mutex
	got    []*message.Message
	delays []time.Duration
	fail   error
}

func (d *delayedTier) Redeliver(_ context.Context, m *message.Message, delay time.Duration) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail != nil {
		return d.fail
	}
	d.got = append(d.got, m)
	d.delays = append(d.delays, delay)
	return nil
}

func redeliveryStack(pub message.Publisher, tier *delayedTier, maxTotal time.Duration, h message.HandlerFunc) message.HandlerFunc {
	dl := middleware.DeadLetter(middleware.DeadLetterConfig{
		Publisher: pub, Topic: "dlq",
		Redelivery: middleware.RedeliveryConfig{Redeliverer: tier, Delays: []time.Duration{time.Second, time.Minute}, MaxTotal: maxTotal},
	})
	return dl(middleware.Retry(middleware.RetryConfig{MaxAttempts: 2, InitialInterval: time.Nanosecond, RandomizationFactor: -1})(h))
}

// Each round goes to the next delay with the budget in its headers; after
// the last delay the dead letter carries the totals of every round.
func TestDelayedRetryBudgetTravelsWithTheMessage(t *testing.T) {
	pub := &recordingPublisher{}
	tier := &delayedTier{}
	calls := 0
	h := redeliveryStack(pub, tier, 0, func(*message.Message) ([]*message.Message, error) {
		calls++
		return nil, errors.New("down " + strconv.Itoa(calls))
	})
	msg := newMsg("r1", "payload")
	for round := 1; round <= 3; round++ {
		if _, err := h(msg); err != nil {
			t.Fatalf("round %d: %v, want an ack", round, err)
		}
		if round < 3 {
			if len(tier.got) != round {
				t.Fatalf("round %d: %d redeliveries, want %d", round, len(tier.got), round)
			}
			msg = tier.got[round-1]
			b := middleware.RetryBudgetOf(msg.Metadata)
			if b.Rounds != round || b.Attempts != 2*round || len(b.History) != round || msg.UUID != "r1" || string(msg.Payload) != "payload" {
				t.Fatalf("round %d: redelivered %s %q with budget %+v", round, msg.UUID, msg.Payload, b)
			}
		}
	}
	if want := []time.Duration{time.Second, time.Minute}; len(tier.delays) != 2 || tier.delays[0] != want[0] || tier.delays[1] != want[1] {
		t.Errorf("delays %v, want %v", tier.delays, want)
	}
	dls := pub.topic("dlq")
	if len(dls) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dls))
	}
	md := dls[0].Metadata
	if md.Get(middleware.KeyDLQAttempts) != "6" || md.Get(middleware.KeyDLQRounds) != "3" || md.Get(middleware.KeyDLQReason) != middleware.ReasonRetriesExhausted {
		t.Errorf("dead letter attempts %s rounds %s reason %s, want 6, 3, %s", md.Get(middleware.KeyDLQAttempts),
			md.Get(middleware.KeyDLQRounds), md.Get(middleware.KeyDLQReason), middleware.ReasonRetriesExhausted)
	}
	if h := middleware.RetryBudgetOf(md).History; len(h) != 3 || h[2].Error != "down 6" || h[0].Error != "down 2" {
		t.Errorf("history %+v, want the three rounds' last errors", h)
	}
	dls[0].Metadata.Set(middleware.KeyDLQTopic, "orders") // consumed outside a router here
	if _, out, err := middleware.Replay(dls[0]); err != nil || out.Metadata.Get(middleware.KeyRetryRounds) != "" || out.Metadata.Get(middleware.KeyRetryHistory) != "" {
		t.Errorf("Replay kept the budget: %v %v", out.Metadata, err)
	}
}

// A permanent error, a cancelled context and a spent time budget never go
// to the delayed tier; a failing tier nacks the message, nothing is lost.
func TestDelayedRetryOnlyForTransientErrorsWithinBudget(t *testing.T) {
	t.Run("permanent", func(t *testing.T) {
		pub, tier := &recordingPublisher{}, &delayedTier{}
		h := redeliveryStack(pub, tier, 0, func(*message.Message) ([]*message.Message, error) {
			return nil, middleware.Permanent(errors.New("bad"))
		})
		if _, err := h(newMsg("p", "")); err != nil || len(tier.got) != 0 || len(pub.topic("dlq")) != 1 {
			t.Errorf("err %v, %d redeliveries, %d dead letters; want ack, 0, 1", err, len(tier.got), len(pub.topic("dlq")))
		}
	})
	t.Run("shutdown", func(t *testing.T) {
		pub, tier := &recordingPublisher{}, &delayedTier{}
		ctx, cancel := context.WithCancel(context.Background())
		h := redeliveryStack(pub, tier, 0, func(*message.Message) ([]*message.Message, error) {
			cancel()
			return nil, errors.New("interrupted")
		})
		m := newMsg("s", "")
		m.SetContext(ctx)
		if _, err := h(m); err == nil || len(tier.got) != 0 || len(pub.topic("dlq")) != 0 {
			t.Errorf("err %v, %d redeliveries, %d dead letters; want a nack, 0, 0", err, len(tier.got), len(pub.topic("dlq")))
		}
	})
	t.Run("time budget spent", func(t *testing.T) {
		pub, tier := &recordingPublisher{}, &delayedTier{}
		h := redeliveryStack(pub, tier, time.Hour, func(*message.Message) ([]*message.Message, error) {
			return nil, errors.New("down")
		})
		m := newMsg("t", "")
		m.Metadata.Set(middleware.KeyRetryRounds, "1")
		m.Metadata.Set(middleware.KeyRetryAttempts, "2")
		m.Metadata.Set(middleware.KeyRetryFirstFailure, time.Now().Add(-59*time.Minute).UTC().Format(time.RFC3339Nano))
		if _, err := h(m); err != nil || len(tier.got) != 0 || len(pub.topic("dlq")) != 1 {
			t.Fatalf("err %v, %d redeliveries, %d dead letters; want ack, 0, 1 (a 1m round would end after the 1h cap)", err, len(tier.got), len(pub.topic("dlq")))
		}
		if got := pub.topic("dlq")[0].Metadata.Get(middleware.KeyDLQAttempts); got != "4" {
			t.Errorf("dead letter attempts %s, want 4", got)
		}
	})
	t.Run("malformed headers", func(t *testing.T) {
		pub, tier := &recordingPublisher{}, &delayedTier{}
		h := redeliveryStack(pub, tier, 0, func(*message.Message) ([]*message.Message, error) {
			return nil, errors.New("down")
		})
		m := newMsg("bad-headers", "")
		m.Metadata.Set(middleware.KeyRetryRounds, "-3")
		m.Metadata.Set(middleware.KeyRetryAttempts, "x")
		m.Metadata.Set(middleware.KeyRetryHistory, "{not json")
		if _, err := h(m); err != nil || len(tier.got) != 1 || tier.delays[0] != time.Second {
			t.Errorf("err %v, %d redeliveries; want an ack and a first round with a fresh budget", err, len(tier.got))
		}
	})
	t.Run("tier fails", func(t *testing.T) {
		pub, tier := &recordingPublisher{}, &delayedTier{fail: errors.New("broker down")}
		h := redeliveryStack(pub, tier, 0, func(*message.Message) ([]*message.Message, error) {
			return nil, errors.New("down")
		})
		_, err := h(newMsg("f", ""))
		if err == nil || len(pub.topic("dlq")) != 0 || middleware.IsPermanent(err) {
			t.Errorf("err %v, %d dead letters; want a nack and none", err, len(pub.topic("dlq")))
		}
	})
}

// A message published again (a handler forwarding a copy of what it got)
// starts a budget of its own: Propagate drops the budget it carries.
func TestDelayedRetryPublishedCopyStartsAFreshBudget(t *testing.T) {
	m := newMsg("fwd", "")
	for k, v := range map[string]string{middleware.KeyRetryRounds: "2", middleware.KeyRetryAttempts: "8",
		middleware.KeyRetryFirstFailure: time.Now().UTC().Format(time.RFC3339Nano), middleware.KeyRetryHistory: "[]"} {
		m.Metadata.Set(k, v)
	}
	middleware.Propagate(context.Background(), m)
	if b := middleware.RetryBudgetOf(m.Metadata); b.Rounds != 0 || b.Attempts != 0 || !b.FirstFailure.IsZero() || len(b.History) != 0 {
		t.Errorf("published copy keeps the budget %+v", b)
	}
}
