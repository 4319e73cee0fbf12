package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/sony/gobreaker/v2"

	"github.com/busline/busline/middleware"
	"github.com/busline/busline/schema"
)

type typedError struct{}

func (typedError) Error() string     { return "unknown schema version 7" }
func (typedError) ErrorType() string { return "schema_version_unknown" }

func TestDeadLetterPublishesFailedMessageAndAcks(t *testing.T) {
	pub := &recordingPublisher{}
	var infos []middleware.DeadLetterInfo
	mw := middleware.DeadLetter(middleware.DeadLetterConfig{
		Publisher: pub,
		Topic:     "orders.dlq",
		Observer:  observer{deadLettered: func(i middleware.DeadLetterInfo) { infos = append(infos, i) }},
	})
	h := mw(middleware.Retry(middleware.RetryConfig{})(func(*message.Message) ([]*message.Message, error) {
		return []*message.Message{message.NewMessage("produced", nil)}, fmtErr(middleware.Permanent(typedError{}))
	}))
	payload := "\x00\xffbinary payload"
	msg := newMsg("d1", payload)
	msg.Metadata.Set(schema.KeyType, "com.example.order.created")
	out, err := h(msg)
	if err != nil || out != nil {
		t.Fatalf("got %v, %v; want nil, nil (ack, produced messages dropped)", out, err)
	}
	dls := pub.topic("orders.dlq")
	if len(dls) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dls))
	}
	dl := dls[0]
	if dl.UUID != "d1" || string(dl.Payload) != payload {
		t.Errorf("dead letter %q %q, want same UUID and payload", dl.UUID, dl.Payload)
	}
	want := map[string]string{
		schema.KeyType:            "com.example.order.created",
		middleware.KeyDLQReason:   "schema_version_unknown",
		middleware.KeyDLQError:    "decode: unknown schema version 7",
		middleware.KeyDLQAttempts: "1",
		middleware.KeyDLQHandler:  "",
		middleware.KeyDLQTopic:    "",
	}
	for k, v := range want {
		if got := dl.Metadata.Get(k); got != v {
			t.Errorf("metadata %s = %q, want %q", k, got, v)
		}
	}
	for _, k := range []string{middleware.KeyDLQFirstFailure, middleware.KeyDLQLastFailure} {
		if _, err := time.Parse(time.RFC3339Nano, dl.Metadata.Get(k)); err != nil {
			t.Errorf("metadata %s: %v", k, err)
		}
	}
	if len(pub.topic("")) != 0 {
		t.Error("produced messages were published")
	}
	if len(infos) != 1 || infos[0].Reason != "schema_version_unknown" || infos[0].Topic != "orders.dlq" {
		t.Errorf("DeadLettered got %+v", infos)
	}
}

func fmtErr(err error) error { return fmt.Errorf("decode: %w", err) }

func TestDeadLetterRecordsRetries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pub := &recordingPublisher{}
		h := middleware.DeadLetter(middleware.DeadLetterConfig{Publisher: pub, Topic: "dlq"})(
			middleware.Retry(middleware.RetryConfig{MaxAttempts: 3})(func(*message.Message) ([]*message.Message, error) {
				return nil, errTransient
			}))
		start := time.Now()
		if _, err := h(newMsg("d2", "")); err != nil {
			t.Fatal(err)
		}
		dl := pub.topic("dlq")[0]
		if got := dl.Metadata.Get(middleware.KeyDLQAttempts); got != "3" {
			t.Errorf("attempts = %q, want 3", got)
		}
		if got := dl.Metadata.Get(middleware.KeyDLQReason); got != middleware.ReasonRetriesExhausted {
			t.Errorf("reason = %q", got)
		}
		first, _ := time.Parse(time.RFC3339Nano, dl.Metadata.Get(middleware.KeyDLQFirstFailure))
		last, _ := time.Parse(time.RFC3339Nano, dl.Metadata.Get(middleware.KeyDLQLastFailure))
		if !first.Equal(start) || !last.After(first) {
			t.Errorf("first %v last %v start %v", first, last, start)
		}
	})
}

// A handler's own context.Canceled (a context of its own was cancelled)
// while the message's context is live is an ordinary failure: it is
// dead-lettered, not redelivered in a loop.
func TestDeadLetterTakesAHandlersOwnCancellation(t *testing.T) {
	pub := &recordingPublisher{}
	h := middleware.DeadLetter(middleware.DeadLetterConfig{Publisher: pub, Topic: "dlq"})(
		func(*message.Message) ([]*message.Message, error) {
			return nil, fmt.Errorf("fan-out: %w", context.Canceled)
		})
	if _, err := h(newMsg("d4", "")); err != nil {
		t.Errorf("err = %v, want the message acked after its dead letter", err)
	}
	if n := len(pub.topic("dlq")); n != 1 {
		t.Errorf("%d dead letters, want 1", n)
	}
}

func TestDeadLetterPassesRedeliveriesThrough(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for name, tc := range map[string]struct {
		ctx context.Context
		err error
	}{
		"shutdown":          {cancelled, errTransient},
		"breaker open":      {context.Background(), gobreaker.ErrOpenState},
		"in progress":       {context.Background(), middleware.ErrInProgress},
		"dedup store error": {context.Background(), &middleware.DedupStoreError{Op: "claim", Err: errTransient}},
	} {
		t.Run(name, func(t *testing.T) {
			pub := &recordingPublisher{}
			h := middleware.DeadLetter(middleware.DeadLetterConfig{Publisher: pub, Topic: "dlq"})(
				func(*message.Message) ([]*message.Message, error) { return nil, tc.err })
			msg := newMsg("d3", "")
			msg.SetContext(tc.ctx)
			if _, err := h(msg); !errors.Is(err, tc.err) {
				t.Errorf("err = %v, want %v", err, tc.err)
			}
			if n := len(pub.topic("dlq")); n != 0 {
				t.Errorf("%d dead letters, want none", n)
			}
		})
	}
}

func TestDeadLetterPublishFailureNacksAfterDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pubErr := errors.New("broker down")
		failing := func(*message.Message) ([]*message.Message, error) { return nil, errTransient }
		dl := middleware.DeadLetter(middleware.DeadLetterConfig{
			Publisher: &recordingPublisher{err: pubErr}, Topic: "dlq",
		})
		// DeadLetter itself returns at once, with both errors: a nack.
		start := time.Now()
		_, err := dl(failing)(newMsg("d4", ""))
		if !errors.Is(err, pubErr) || !errors.Is(err, errTransient) {
			t.Errorf("err = %v, want both the handler and the publish error", err)
		}
		if took := time.Since(start); took != 0 {
			t.Errorf("returned after %v, want at once", took)
		}

		// In a stack, the nack-delay step outside it delays that nack.
		h := middleware.Chain(
			middleware.NackDelay(middleware.NackDelayConfig{InitialDelay: 2 * time.Second}), dl)(failing)
		start = time.Now()
		_, err = h(newMsg("d5", ""))
		if !errors.Is(err, pubErr) {
			t.Errorf("err = %v, want the publish error", err)
		}
		if took := time.Since(start); took < 1500*time.Millisecond || took > 2500*time.Millisecond {
			t.Errorf("returned after %v, want 2s ±25%%", took)
		}
	})
}

func TestDeadLetterTruncatesErrorText(t *testing.T) {
	pub := &recordingPublisher{}
	long := strings.Repeat("é", 2000)
	h := middleware.DeadLetter(middleware.DeadLetterConfig{Publisher: pub, Topic: "dlq", MaxErrorLength: 101})(
		func(*message.Message) ([]*message.Message, error) { return nil, errors.New(long) })
	if _, err := h(newMsg("d6", "")); err != nil {
		t.Fatal(err)
	}
	got := pub.topic("dlq")[0].Metadata.Get(middleware.KeyDLQError)
	if len(got) > 101 || !strings.HasSuffix(got, "…") || !strings.HasPrefix(got, "éé") {
		t.Errorf("truncated text %q (%d bytes)", got, len(got))
	}
}

func TestDeadLetterDefaultTopicUnderRouter(t *testing.T) {
	// Outside a router the consumed topic is unknown.
	pub := &recordingPublisher{}
	h := middleware.DeadLetter(middleware.DeadLetterConfig{Publisher: pub})(
		func(*message.Message) ([]*message.Message, error) { return nil, errTransient })
	if _, err := h(newMsg("d7", "")); err != nil {
		t.Fatal(err)
	}
	if n := len(pub.topic("busline.dlq")); n != 1 {
		t.Errorf("%d messages on busline.dlq, want 1", n)
	}
}

func TestDeadLetterNilPublisherPanics(t *testing.T) {
	defer func() {
		if r := recover(); r == nil || !strings.HasPrefix(r.(string), "middleware: ") {
			t.Errorf("panic %v", r)
		}
	}()
	middleware.DeadLetter(middleware.DeadLetterConfig{})
}

func TestReplay(t *testing.T) {
	dl := message.NewMessage("u1", message.Payload("p"))
	dl.Metadata.Set(schema.KeyCorrelationID, "c1")
	dl.Metadata.Set(middleware.KeyDLQReason, "handler_error")
	dl.Metadata.Set(middleware.KeyDLQTopic, "orders")
	dl.Metadata.Set(middleware.KeyDLQAttempts, "5")
	topic, out, err := middleware.Replay(dl)
	if err != nil {
		t.Fatal(err)
	}
	if topic != "orders" || out.UUID != "u1" || string(out.Payload) != "p" {
		t.Errorf("replay to %q: %q %q", topic, out.UUID, out.Payload)
	}
	if out.Metadata.Get(schema.KeyCorrelationID) != "c1" {
		t.Error("correlation lost")
	}
	for k := range out.Metadata {
		if strings.HasPrefix(k, "busline_dlq_") {
			t.Errorf("dead-letter key %s kept", k)
		}
	}
	if got := out.Metadata.Get(middleware.KeyReplayCount); got != "1" {
		t.Errorf("replay count %q", got)
	}
	// A second round counts on.
	out.Metadata.Set(middleware.KeyDLQReason, "x")
	out.Metadata.Set(middleware.KeyDLQTopic, "orders")
	_, again, _ := middleware.Replay(out)
	if n, _ := strconv.Atoi(again.Metadata.Get(middleware.KeyReplayCount)); n != 2 {
		t.Errorf("replay count %d, want 2", n)
	}

	if _, _, err := middleware.Replay(message.NewMessage("x", nil)); err == nil {
		t.Error("replay of a non-dead-letter succeeded")
	}
}

// A message that arrives without a correlation id starts its own: the
// handled message stays as it came, and its dead-letter copy names the
// correlation (its UUID, as it has no event id), through the composed
// steps, through Stack, and through a dead-letter step with no
// correlation step inside it.
func TestDeadLetterCopyNamesStartedCorrelation(t *testing.T) {
	fail := func(*message.Message) ([]*message.Message, error) {
		return nil, middleware.Permanent(errors.New("bad"))
	}
	for name, mw := range map[string]func(*recordingPublisher) message.HandlerMiddleware{
		"composed": func(pub *recordingPublisher) message.HandlerMiddleware {
			return func(h message.HandlerFunc) message.HandlerFunc {
				return middleware.Correlation()(middleware.DeadLetter(middleware.DeadLetterConfig{Publisher: pub, Topic: "dlq"})(h))
			}
		},
		"stack": func(pub *recordingPublisher) message.HandlerMiddleware {
			return middleware.Stack(middleware.StackConfig{DeadLetter: middleware.DeadLetterConfig{Publisher: pub, Topic: "dlq"}})
		},
		"dead-letter alone": func(pub *recordingPublisher) message.HandlerMiddleware {
			return middleware.DeadLetter(middleware.DeadLetterConfig{Publisher: pub, Topic: "dlq"})
		},
	} {
		pub := &recordingPublisher{}
		msg := newMsg("root-1", "x")
		if _, err := mw(pub)(fail)(msg); err != nil {
			t.Fatalf("%s: %v, want the message dead-lettered and acked", name, err)
		}
		if _, ok := msg.Metadata[schema.KeyCorrelationID]; ok {
			t.Errorf("%s: the handled message was changed: %v", name, msg.Metadata)
		}
		dls := pub.topic("dlq")
		if len(dls) != 1 {
			t.Fatalf("%s: %d dead letters, want 1", name, len(dls))
		}
		if got := dls[0].Metadata.Get(schema.KeyCorrelationID); got != "root-1" {
			t.Errorf("%s: dead letter %s = %q, want root-1", name, schema.KeyCorrelationID, got)
		}
	}
}
