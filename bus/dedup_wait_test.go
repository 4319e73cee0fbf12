package bus_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/bus/telemetry"
	"github.com/busline/busline/middleware"
)

// A message whose dedup claim a crashed process left behind waits for the
// lease to run out, then is handled: one log line while it waits, no ERROR
// line, one busline.dedup.waits count, no retry attempt spent.
func TestCrashRecoveryWaitIsLoggedOnceAndCounted(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	var logs syncBuffer
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	store := middleware.NewMemoryStore(middleware.MemoryStoreConfig{})
	const lease = 300 * time.Millisecond
	// The claim of a process that died while handling the message.
	if st, err := store.Claim(context.Background(), "h/m1", "crashed-owner", lease); err != nil || st != middleware.Claimed {
		t.Fatal(st, err)
	}
	b, err := bus.New(bus.Config{Group: "svc", DeadLetterTopic: bustest.Name("dlq")},
		bus.WithMeterProvider(mp), bus.WithLogger(logger),
		bus.WithStack(func(c *middleware.StackConfig) { c.Dedup.Store = store }))
	if err != nil {
		t.Fatal(err)
	}
	topic := bustest.Name("orders")
	done := make(chan int, 1)
	if err := b.Handle("h", topic, func(ctx context.Context, m *message.Message) error {
		done <- middleware.AttemptFromContext(ctx)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := b.Publish(context.Background(), topic, message.NewMessage("m1", nil)); err != nil {
		t.Fatal(err)
	}
	stop := runBus(t, b)
	select {
	case attempt := <-done:
		if attempt != 1 {
			t.Errorf("handled at attempt %d, want 1 (waiting spends no attempt)", attempt)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("message not handled within 10s of its claim's lease")
	}
	if waited := time.Since(start); waited < lease {
		t.Errorf("handled after %v, before the crashed owner's lease (%v) ran out", waited, lease)
	}
	stop()

	waits, bad := 0, 0
	for _, l := range logs.lines() {
		if msg, _ := l["msg"].(string); strings.Contains(msg, "waiting for its dedup claim") {
			waits++
		}
		if l["level"] == "ERROR" || l["level"] == "WARN" {
			bad++
			t.Errorf("log line %v", l)
		}
	}
	if waits != 1 || bad != 0 {
		t.Errorf("%d wait log lines and %d ERROR or WARN lines, want 1 and 0", waits, bad)
	}
	if n := sumOf(t, metricsOf(t, reader), telemetry.MetricDedupWaits, "{message}", map[string]any{"busline.handler.name": "h"}); n != 1 {
		t.Errorf("%s = %d, want 1", telemetry.MetricDedupWaits, n)
	}
}
