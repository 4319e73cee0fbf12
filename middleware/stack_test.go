package middleware_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/busline/busline/middleware"
	"github.com/busline/busline/schema"
)

func TestStackSteps(t *testing.T) {
	cfg := middleware.StackConfig{Disable: middleware.StepDedup | middleware.StepBreaker}
	got := make([]string, 0)
	for _, s := range cfg.Steps() {
		got = append(got, s.String())
	}
	if want := "correlation nack-delay retry timeout recover"; strings.Join(got, " ") != want {
		t.Errorf("steps %v, want %s", got, want)
	}
	if s := (middleware.StepDedup | middleware.StepBreaker).String(); s != "dedup|breaker" {
		t.Errorf("String() = %q", s)
	}
}

// TestStackUnderRouter runs the default stack on a real Watermill router and
// the in-process broker: every message has exactly one effect or sits in the
// dead-letter topic with the right details.
func TestStackUnderRouter(t *testing.T) {
	logger := watermill.NopLogger{}
	pubsub := gochannel.NewGoChannel(gochannel.Config{}, logger)
	defer pubsub.Close()
	dlq, err := pubsub.Subscribe(context.Background(), "orders.dlq")
	if err != nil {
		t.Fatal(err)
	}
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 5 * time.Second}, logger)
	if err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	calls := map[string]int{}
	effects := map[string]int{}
	effected := make(chan string, 100)
	dupHits := make(chan string, 10)
	router.AddConsumerHandler("orders-handler", "orders", pubsub, func(msg *message.Message) error {
		mu.Lock()
		calls[msg.UUID]++
		n := calls[msg.UUID]
		mu.Unlock()
		switch {
		case strings.HasPrefix(msg.UUID, "poison"):
			return middleware.Permanent(errors.New("cannot decode"))
		case strings.HasPrefix(msg.UUID, "always") && msg.Metadata.Get(middleware.KeyReplayCount) == "":
			return errTransient
		case strings.HasPrefix(msg.UUID, "flaky") && n <= 2:
			return errTransient
		case strings.HasPrefix(msg.UUID, "panic") && n == 1:
			panic("boom")
		}
		mu.Lock()
		effects[msg.UUID]++
		mu.Unlock()
		effected <- msg.UUID
		return nil
	}).AddMiddleware(middleware.Stack(middleware.StackConfig{
		DeadLetter: middleware.DeadLetterConfig{Publisher: pubsub},
		Retry:      middleware.RetryConfig{MaxAttempts: 3, InitialInterval: time.Millisecond},
		Dedup: middleware.DedupConfig{
			Observer: observer{duplicate: func(i middleware.DedupInfo) { dupHits <- i.Message.UUID }},
		},
	}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runDone := make(chan error, 1)
	go func() { runDone <- router.Run(ctx) }()
	<-router.Running()

	publish := func(id string) {
		msg := message.NewMessage(id, message.Payload("payload-"+id))
		msg.Metadata.Set(schema.KeyCorrelationID, "corr-"+id)
		if err := pubsub.Publish("orders", msg); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"ok-1", "poison-1", "flaky-1", "panic-1", "always-1", "dup-1"} {
		publish(id)
	}
	timeout := time.After(10 * time.Second)
	for range 4 {
		select {
		case <-effected:
		case <-timeout:
			t.Fatal("timed out waiting for effects")
		}
	}
	dead := map[string]*message.Message{}
	for len(dead) < 2 {
		select {
		case m := <-dlq:
			dead[m.UUID] = m
			m.Ack()
		case <-timeout:
			t.Fatal("timed out waiting for dead letters")
		}
	}
	publish("dup-1") // a duplicate of a processed message
	select {
	case id := <-dupHits:
		if id != "dup-1" {
			t.Errorf("duplicate hit for %s", id)
		}
	case <-timeout:
		t.Fatal("timed out waiting for the duplicate")
	}

	mu.Lock()
	for _, id := range []string{"ok-1", "flaky-1", "panic-1", "dup-1"} {
		if effects[id] != 1 {
			t.Errorf("%s: %d effects, want 1", id, effects[id])
		}
	}
	if calls["flaky-1"] != 3 || calls["always-1"] != 3 || calls["poison-1"] != 1 || calls["dup-1"] != 1 {
		t.Errorf("calls %v", calls)
	}
	mu.Unlock()

	for id, want := range map[string]map[string]string{
		"poison-1": {middleware.KeyDLQReason: "permanent", middleware.KeyDLQAttempts: "1"},
		"always-1": {middleware.KeyDLQReason: "retries_exhausted", middleware.KeyDLQAttempts: "3"},
	} {
		m := dead[id]
		if m == nil {
			t.Errorf("%s not dead-lettered", id)
			continue
		}
		want[middleware.KeyDLQHandler] = "orders-handler"
		want[middleware.KeyDLQTopic] = "orders"
		want[schema.KeyCorrelationID] = "corr-" + id
		for k, v := range want {
			if got := m.Metadata.Get(k); got != v {
				t.Errorf("%s: %s = %q, want %q", id, k, got, v)
			}
		}
		if string(m.Payload) != "payload-"+id {
			t.Errorf("%s: payload %q", id, m.Payload)
		}
	}

	// A replay of a dead letter is processed, not swallowed as a duplicate.
	topic, replay, err := middleware.Replay(dead["always-1"])
	if err != nil {
		t.Fatal(err)
	}
	if err := pubsub.Publish(topic, replay); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-effected:
		if id != "always-1" {
			t.Errorf("effect of %s, want the replayed always-1", id)
		}
	case <-timeout:
		t.Fatal("timed out waiting for the replay")
	}

	if err := router.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-runDone; err != nil {
		t.Fatal(err)
	}
}

// On shutdown the router cancels in-flight message contexts: the stack must
// nack such messages for redelivery, never dead-letter them, and not wait.
func TestStackShutdownDoesNotDeadLetter(t *testing.T) {
	logger := watermill.NopLogger{}
	pubsub := gochannel.NewGoChannel(gochannel.Config{}, logger)
	defer pubsub.Close()
	dlq := &recordingPublisher{}
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 5 * time.Second}, logger)
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	var once sync.Once
	stackErrs := make(chan error, 16)
	router.AddConsumerHandler("h", "orders", pubsub, func(msg *message.Message) error {
		once.Do(func() { close(started) })
		<-msg.Context().Done()
		return msg.Context().Err()
	}).AddMiddleware(func(h message.HandlerFunc) message.HandlerFunc {
		// First added, so outermost: sees what the stack returns to the router.
		return func(msg *message.Message) ([]*message.Message, error) {
			out, err := h(msg)
			select {
			case stackErrs <- err:
			default:
			}
			return out, err
		}
	}, middleware.Stack(middleware.StackConfig{
		DeadLetter: middleware.DeadLetterConfig{Publisher: dlq, Topic: "dlq"},
		Retry:      middleware.RetryConfig{InitialInterval: time.Hour},
	}))
	go func() { _ = router.Run(context.Background()) }()
	<-router.Running()
	if err := pubsub.Publish("orders", message.NewMessage("m1", nil)); err != nil {
		t.Fatal(err)
	}
	<-started
	start := time.Now()
	if err := router.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("close took %v: a wait in the stack ignored cancellation", took)
	}
	if n := len(dlq.topic("dlq")); n != 0 {
		t.Errorf("%d dead letters on shutdown", n)
	}
	if err := <-stackErrs; !errors.Is(err, context.Canceled) {
		t.Errorf("stack returned %v, want context.Canceled", err)
	}
}

// StackConfig.Observer is told what every step did, unless the step has an
// Observer of its own.
func TestStackObserver(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var stackSaw, retrySaw []string
		stackObs := observer{
			retried:      func(i middleware.RetryInfo) { stackSaw = append(stackSaw, "retried") },
			deadLettered: func(i middleware.DeadLetterInfo) { stackSaw = append(stackSaw, "dead-lettered "+i.Reason) },
			duplicate:    func(i middleware.DedupInfo) { stackSaw = append(stackSaw, "duplicate "+i.Message.UUID) },
		}
		h := middleware.Stack(middleware.StackConfig{
			Observer:   stackObs,
			DeadLetter: middleware.DeadLetterConfig{Publisher: &recordingPublisher{}, Topic: "dlq"},
			Retry: middleware.RetryConfig{MaxAttempts: 2, Observer: observer{
				retried: func(middleware.RetryInfo) { retrySaw = append(retrySaw, "retried") },
			}},
		})(func(m *message.Message) ([]*message.Message, error) {
			if m.UUID == "bad" {
				return nil, errTransient
			}
			return nil, nil
		})
		for _, id := range []string{"bad", "ok", "ok"} {
			if _, err := h(newMsg(id, "")); err != nil {
				t.Fatalf("%s: %v", id, err)
			}
		}
		if got, want := strings.Join(stackSaw, ", "), "dead-lettered retries_exhausted, duplicate ok"; got != want {
			t.Errorf("stack observer saw %q, want %q", got, want)
		}
		if len(retrySaw) != 1 {
			t.Errorf("retry's own observer saw %v, want one retry", retrySaw)
		}
	})
}
