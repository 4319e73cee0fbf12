package memory_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"
	"go.uber.org/goleak"

	"github.com/busline/busline/bus/memory"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConformance(t *testing.T) {
	// The suite publishes up to 5,000 messages before it subscribes: room
	// for them, or Publish rightly reports the queue full.
	b, err := memory.New(memory.Config{Buffer: 10000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	tests.TestPubSub(t,
		tests.Features{
			ConsumerGroups:      true,
			ExactlyOnceDelivery: false,
			GuaranteedOrder:     true,
			// The suite's "persistent" means messages outlive a subscriber:
			// they do, in the group's queue, for the broker's lifetime (not
			// across a process restart).
			Persistent:            true,
			RequireSingleInstance: true,
		},
		// Without consumer groups the suite expects every subscriber to
		// share one: the default group.
		func(t *testing.T) (message.Publisher, message.Subscriber) {
			s, err := b.Subscriber("default")
			if err != nil {
				t.Fatal(err)
			}
			return nopClose{b}, s
		},
		func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
			s, err := b.Subscriber(group)
			if err != nil {
				t.Fatal(err)
			}
			return nopClose{b}, s
		},
	)
}

// nopClose keeps the suite's Close of a publisher from closing the shared broker.
type nopClose struct{ *memory.Broker }

func (nopClose) Close() error { return nil }

func TestPublishWaitsWhenQueueIsFull(t *testing.T) {
	b, err := memory.New(memory.Config{Buffer: 2, PublishTimeout: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Prepare(context.Background(), "t", "g"); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := b.Publish("t", message.NewMessage(fmt.Sprint(i), nil)); err != nil {
			t.Fatal(err)
		}
	}
	// The queue is full: a third publish waits until its context ends.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Publish("t", message.NewMessageWithContext(ctx, "2", nil)) }()
	select {
	case err := <-done:
		t.Fatalf("publish to a full queue returned %v, want it to wait", err)
	default:
	}
	if d := b.Depth("t", "g"); d != 2 {
		t.Fatalf("depth = %d, want 2", d)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("publish = %v, want context.Canceled", err)
	}
}

func TestPublishTimeoutReportsQueueFull(t *testing.T) {
	b, err := memory.New(memory.Config{Buffer: 1, PublishTimeout: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Publish("t", message.NewMessage("0", nil)); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish("t", message.NewMessage("1", nil)); !errors.Is(err, memory.ErrQueueFull) {
		t.Fatalf("publish = %v, want ErrQueueFull", err)
	}
}

func TestOrderKeptAcrossNacks(t *testing.T) {
	b, err := memory.New(memory.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	const n = 200
	for i := range n {
		if err := b.Publish("t", message.NewMessage(fmt.Sprint(i), nil)); err != nil {
			t.Fatal(err)
		}
	}
	s, _ := b.Subscriber("g")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := s.Subscribe(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	nacked := map[string]bool{}
	for len(got) < n {
		m := <-ch
		if len(got)%3 == 0 && !nacked[m.UUID] {
			nacked[m.UUID] = true
			// Nack every third message once: it must come back before the next.
			m.Nack()
			continue
		}
		got = append(got, m.UUID)
		m.Ack()
	}
	for i, id := range got {
		if id != fmt.Sprint(i) {
			t.Fatalf("message %d is %s: order broken", i, id)
		}
	}
	cancel()
	s.Close()
}

func TestGroupsEachGetEveryMessage(t *testing.T) {
	b, _ := memory.New(memory.Config{})
	defer b.Close()
	for _, g := range []string{"a", "b"} {
		if err := b.Prepare(context.Background(), "t", g); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 10 {
		if err := b.Publish("t", message.NewMessage(fmt.Sprint(i), nil)); err != nil {
			t.Fatal(err)
		}
	}
	for _, g := range []string{"a", "b"} {
		if d := b.Depth("t", g); d != 10 {
			t.Errorf("group %s depth = %d, want 10", g, d)
		}
	}
}

func TestDrainWaitsForInFlight(t *testing.T) {
	b, _ := memory.New(memory.Config{})
	defer b.Close()
	s, _ := b.Subscriber("g")
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, _ := s.Subscribe(ctx, "t")
	for i := range 3 {
		if err := b.Publish("t", message.NewMessage(fmt.Sprint(i), nil)); err != nil {
			t.Fatal(err)
		}
	}
	m := <-ch // in flight
	b.StopFetching()
	drained := make(chan error, 1)
	go func() { drained <- b.Drain(context.Background()) }()
	select {
	case err := <-drained:
		t.Fatalf("drain returned %v with a message in flight", err)
	default:
	}
	m.Ack()
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
	select {
	case m, ok := <-ch:
		if ok {
			t.Fatalf("message %s delivered after StopFetching", m.UUID)
		}
	default:
	}
	if d := b.Depth("t", "g"); d != 2 {
		t.Fatalf("depth after drain = %d, want the 2 undelivered messages kept", d)
	}
}
