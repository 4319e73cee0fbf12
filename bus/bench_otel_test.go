package bus

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/busline/busline/bus/memory"
	"github.com/busline/busline/bus/telemetry"
	"github.com/busline/busline/middleware"
)

// BenchmarkStackOTel extends BenchmarkStack (bench_test.go) with the
// default stack under the bus's telemetry and the real OpenTelemetry SDK
// (always sample, batch span processor with a discarding exporter, a
// meter provider with a reader):
//
//   - default_otel (in BenchmarkStack, beside bare and default): consumer
//     side (process span, consumer metrics, stack hooks) around the default
//     stack; messages are published bare, as in the other sub-benchmarks,
//     so process spans are roots;
//   - default_otel_publish: the same, with every message published through
//     the instrumented publisher (send span, injected traceparent, producer
//     metrics), so process spans are children of send spans.
//   - default_noop: the bus's telemetry with no-op providers (the default
//     when no provider is set): it must cost what default costs.
//
// Run: go test -run '^$' -bench 'BenchmarkStack' -benchmem ./bus/
func BenchmarkStackOTel(b *testing.B) {
	b.Run("default_otel_publish", func(b *testing.B) { benchDefaultOTel(b, true) })
	b.Run("default_noop", func(b *testing.B) {
		benchRouterWith(b, nil, benchTelemetryStack(b, benchTelemetry(b, telemetry.Config{}))...)
	})
}

type discardExporter struct{}

func (discardExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardExporter) Shutdown(context.Context) error                             { return nil }

func benchDefaultOTel(b *testing.B, publish bool) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discardExporter{}), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	tel := benchTelemetry(b, telemetry.Config{TracerProvider: tp, MeterProvider: mp, PollInterval: -1})
	if !tel.Tracing() || !tel.Metrics() {
		b.Fatal("telemetry is off")
	}
	var wrap func(message.Publisher) message.Publisher
	if publish {
		wrap = tel.Publisher
	}
	benchRouterWith(b, wrap, benchTelemetryStack(b, tel)...)
}

// benchTelemetry is the bus's telemetry as New builds it on the
// in-process broker (which describes the messages), with cfg's providers.
func benchTelemetry(b *testing.B, cfg telemetry.Config) *telemetry.Telemetry {
	br, err := memory.New(memory.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = br.Close() })
	cfg.Broker = br
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	return telemetry.New(cfg)
}

// benchTelemetryStack is the default stack with the bus's telemetry
// around it, observing it, as Bus.Handle builds it.
func benchTelemetryStack(b *testing.B, tel *telemetry.Telemetry) []message.HandlerMiddleware {
	cfg := middleware.StackConfig{
		Name:       "bench",
		DeadLetter: middleware.DeadLetterConfig{Publisher: benchDeadLetters(b), Topic: benchDeadLetterTopic},
	}
	h := tel.Handler("bench", benchTopic, "bench")
	h.Observe(&cfg)
	return []message.HandlerMiddleware{h.Middleware(), middleware.Stack(cfg)}
}

// BenchmarkTelemetryMiddleware measures the handler side without a router
// or broker: the default stack called directly, bare and under the bus's
// telemetry with the real SDK. The difference is what telemetry adds per
// message, less noisy than the router benchmarks.
func BenchmarkTelemetryMiddleware(b *testing.B) {
	noop := func(*message.Message) ([]*message.Message, error) { return nil, nil }
	run := func(b *testing.B, mws []message.HandlerMiddleware) {
		h := middleware.Chain(mws...)(noop)
		ids := make([]string, b.N)
		for i := range ids {
			ids[i] = "00000000-0000-4000-8000-" + strconv.FormatInt(100000000000+int64(i), 10)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			if _, err := h(message.NewMessage(ids[i], nil)); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("default", func(b *testing.B) {
		run(b, []message.HandlerMiddleware{middleware.Stack(middleware.StackConfig{
			DeadLetter: middleware.DeadLetterConfig{Publisher: benchDeadLetters(b), Topic: benchDeadLetterTopic},
		})})
	})
	b.Run("default_noop", func(b *testing.B) {
		run(b, benchTelemetryStack(b, benchTelemetry(b, telemetry.Config{})))
	})
	b.Run("default_otel", func(b *testing.B) {
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discardExporter{}), sdktrace.WithSampler(sdktrace.AlwaysSample()))
		b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
		run(b, benchTelemetryStack(b, benchTelemetry(b, telemetry.Config{TracerProvider: tp, MeterProvider: mp, PollInterval: -1})))
	})
}
