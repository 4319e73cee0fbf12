package bus

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/busline/busline/bus/telemetry"
	"github.com/busline/busline/middleware"
)

// floorConsumerKind and floorBuckets are the span kind and the histogram
// buckets (the conventions' advisory ones) of the bus's process span and
// durations.
var (
	floorConsumerKind = trace.WithSpanKind(trace.SpanKindConsumer)
	floorBuckets      = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}
)

// BenchmarkTelemetryFloor measures what the OpenTelemetry SDK itself costs
// per message, in a loop (no router, no goroutine per message), with the
// benchmark's SDK set-up (always sample, batch span processor, discarding
// exporter, manual reader): the floor under what the bus's telemetry adds.
//
//   - span: Start and End of a span with no attributes;
//   - span_attrs: the same with 7 attributes given at start;
//   - span_setattrs: the same 7 attributes set after start (samplers do
//     not see them);
//   - metrics: a counter Add and a histogram Record with a prebuilt set.
func BenchmarkTelemetryFloor(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discardExporter{}), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	tr := tp.Tracer(telemetry.ScopeName)
	ctx := context.Background()
	b.Run("span", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			_, sp := tr.Start(ctx, "process bench", floorConsumerKind)
			sp.End()
		}
	})
	b.Run("span_attrs", func(b *testing.B) {
		attrs := make([]attribute.KeyValue, 7)
		for i := range attrs {
			attrs[i] = attribute.String("k"+string(rune('a'+i)), "value")
		}
		b.ReportAllocs()
		for range b.N {
			_, sp := tr.Start(ctx, "process bench", floorConsumerKind, trace.WithAttributes(attrs...))
			sp.End()
		}
	})
	b.Run("span_setattrs", func(b *testing.B) {
		attrs := make([]attribute.KeyValue, 7)
		for i := range attrs {
			attrs[i] = attribute.String("k"+string(rune('a'+i)), "value")
		}
		b.ReportAllocs()
		for range b.N {
			_, sp := tr.Start(ctx, "process bench", floorConsumerKind)
			sp.SetAttributes(attrs...)
			sp.End()
		}
	})
	b.Run("metrics", func(b *testing.B) {
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
		m := mp.Meter(telemetry.ScopeName)
		c, _ := m.Int64Counter("c")
		h, _ := m.Float64Histogram("h", metric.WithExplicitBucketBoundaries(floorBuckets...))
		set := metric.WithAttributeSet(attribute.NewSet(attribute.String("a", "b"), attribute.String("c", "d")))
		b.ReportAllocs()
		for range b.N {
			c.Add(ctx, 1, set)
			h.Record(ctx, 0.001, set)
		}
	})
}

// BenchmarkStackOTelFloor is BenchmarkStack's default_otel with the bus's
// telemetry replaced by the least a real SDK span and the two per-message
// measurements cost: a middleware that starts a CONSUMER span with no
// attributes and ends it (span), and also adds 1 to a counter and records
// the duration in a histogram with prebuilt attribute sets (span_metrics).
// The same SDK set-up as default_otel. What default_otel costs above
// span_metrics is the bus's telemetry itself (attributes, hooks, context).
func BenchmarkStackOTelFloor(b *testing.B) {
	run := func(b *testing.B, metrics bool) {
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discardExporter{}), sdktrace.WithSampler(sdktrace.AlwaysSample()))
		b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
		tr := tp.Tracer(telemetry.ScopeName)
		m := mp.Meter(telemetry.ScopeName)
		c, _ := m.Int64Counter("c")
		h, _ := m.Float64Histogram("h", metric.WithExplicitBucketBoundaries(floorBuckets...))
		set := metric.WithAttributeSet(attribute.NewSet(attribute.String("a", "b"), attribute.String("c", "d")))
		floor := func(next message.HandlerFunc) message.HandlerFunc {
			return func(msg *message.Message) ([]*message.Message, error) {
				start := time.Now()
				ctx, sp := tr.Start(msg.Context(), "process bench", floorConsumerKind)
				msg.SetContext(ctx)
				if metrics {
					c.Add(context.Background(), 1, set)
				}
				out, err := next(msg)
				sp.End()
				if metrics {
					h.Record(context.Background(), time.Since(start).Seconds(), set)
				}
				return out, err
			}
		}
		benchRouter(b, floor, middleware.Stack(middleware.StackConfig{
			DeadLetter: middleware.DeadLetterConfig{Publisher: benchDeadLetters(b), Topic: benchDeadLetterTopic},
		}))
	}
	b.Run("span", func(b *testing.B) { run(b, false) })
	b.Run("span_metrics", func(b *testing.B) { run(b, true) })
}
