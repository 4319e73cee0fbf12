package bus_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/middleware"
)

func getHealth(t *testing.T, h http.Handler) (int, bus.HealthStatus) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("content type %q", ct)
	}
	var st bus.HealthStatus
	if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
		t.Fatalf("body %q: %v", rec.Body, err)
	}
	return rec.Code, st
}

// TestHealth follows a bus through its life: not ready before Run, ready
// while running, not ready once closed; alive throughout.
func TestHealth(t *testing.T) {
	for _, br := range telBrokers {
		t.Run(br.name, func(t *testing.T) {
			cfg := br.config(t)
			cfg.Group = bustest.Name("svc")
			cfg.DeadLetterTopic = bustest.Name("dlq")
			b, err := bus.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			topic := bustest.Name("t")
			t.Cleanup(func() { deleteAMQP(t, cfg, map[string]string{topic: "h"}) })
			if err := b.Handle("h", topic, func(context.Context, *message.Message) error { return nil }); err != nil {
				t.Fatal(err)
			}
			ctx := bustest.Context(t, 30*time.Second)
			if err := b.Health(ctx); !errors.Is(err, bus.ErrNotRunning) {
				t.Errorf("Health before Run = %v, want ErrNotRunning", err)
			}
			if code, st := getHealth(t, b.HealthHandler()); code != http.StatusServiceUnavailable || st.Status != "unavailable" || st.Error == "" {
				t.Errorf("before Run: %d %+v", code, st)
			}
			if err := b.Live(); err != nil {
				t.Errorf("Live before Run = %v", err)
			}

			stop := runBus(t, b)
			if err := b.Health(ctx); err != nil {
				t.Errorf("Health while running = %v", err)
			}
			if code, st := getHealth(t, b.HealthHandler()); code != http.StatusOK || st.Status != "ok" || st.Broker != cfg.Broker && cfg.Broker != "" {
				t.Errorf("running: %d %+v", code, st)
			}
			if code, _ := getHealth(t, b.LiveHandler()); code != http.StatusOK {
				t.Errorf("live handler while running: %d", code)
			}

			stop()
			if err := b.Health(ctx); !errors.Is(err, bus.ErrClosed) {
				t.Errorf("Health after Close = %v, want ErrClosed", err)
			}
			if code, _ := getHealth(t, b.HealthHandler()); code != http.StatusServiceUnavailable {
				t.Errorf("after Close: %d", code)
			}
			if err := b.Live(); err != nil {
				t.Errorf("Live after Close = %v", err)
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines() []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// TestTelemetryLogs checks that log lines about a message carry its
// correlation id and trace id: the bus's dead-letter line and a handler's
// own line through Bus.Logger.
func TestTelemetryLogs(t *testing.T) {
	var buf syncBuffer
	logger := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	b, err := bus.New(bus.Config{DeadLetterTopic: bustest.Name("dlq")},
		bus.WithLogger(logger), bus.WithTracerProvider(sdktrace.NewTracerProvider()))
	if err != nil {
		t.Fatal(err)
	}
	topic := bustest.Name("t")
	done := make(chan struct{})
	if err := b.Handle("h", topic, func(ctx context.Context, m *message.Message) error {
		defer close(done)
		b.Logger(ctx).Info("handling")
		return middleware.Permanent(errors.New("bad input"))
	}); err != nil {
		t.Fatal(err)
	}
	m := message.NewMessage("m-1", nil)
	m.Metadata.Set("ce_correlationid", "corr-1")
	if err := b.Publish(context.Background(), topic, m); err != nil {
		t.Fatal(err)
	}
	stop := runBus(t, b)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("handler not called within 10s")
	}
	stop()

	want := map[string]bool{"handling": false, "bus: message dead-lettered": false}
	for _, l := range buf.lines() {
		msg, _ := l["msg"].(string)
		if _, ok := want[msg]; !ok {
			continue
		}
		want[msg] = true
		if l["correlation_id"] != "corr-1" || l["message_id"] != "m-1" {
			t.Errorf("%q: correlation_id %v, message_id %v", msg, l["correlation_id"], l["message_id"])
		}
		if tid, _ := l["trace_id"].(string); len(tid) != 32 {
			t.Errorf("%q: trace_id %v", msg, l["trace_id"])
		}
	}
	for msg, seen := range want {
		if !seen {
			t.Errorf("no log line %q", msg)
		}
	}
}
