package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/busline/busline/bus"
)

// telemetry is the example's OpenTelemetry set-up: spans are recorded in
// memory (and also exported over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT
// is set), metrics are read with a manual reader, and both are summarised at
// the end of the story.
type telemetry struct {
	tp     *sdktrace.TracerProvider
	spans  *tracetest.SpanRecorder
	mp     *sdkmetric.MeterProvider
	reader *sdkmetric.ManualReader
}

func newTelemetry(ctx context.Context, otlpEndpoint string) (*telemetry, error) {
	t := &telemetry{spans: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader()}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithSpanProcessor(t.spans)}
	if otlpEndpoint != "" {
		// otlptracehttp reads OTEL_EXPORTER_OTLP_ENDPOINT (and the other
		// OTEL_EXPORTER_OTLP_* variables) itself.
		exp, err := otlptracehttp.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("otlp exporter: %w", err)
		}
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	t.tp = sdktrace.NewTracerProvider(opts...)
	t.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(t.reader))
	return t, nil
}

// busOptions hands the providers to the bus.
func (t *telemetry) busOptions() []bus.Option {
	return []bus.Option{
		bus.WithTracerProvider(t.tp),
		bus.WithMeterProvider(t.mp),
		bus.WithTelemetryPollInterval(-1), // no broker poller in a short demo
	}
}

// shutdown flushes the span exporters and stops the providers.
func (t *telemetry) shutdown(ctx context.Context) error {
	return errors.Join(t.tp.Shutdown(ctx), t.mp.Shutdown(ctx))
}

// traceOf returns the ended spans that belong to the flow with correlation
// id corr, in start order.
func (t *telemetry) traceOf(corr string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range t.spans.Ended() {
		for _, a := range s.Attributes() {
			if a.Key == "messaging.message.conversation_id" && a.Value.AsString() == corr {
				out = append(out, s)
				break
			}
		}
	}
	slices.SortFunc(out, func(a, b sdktrace.ReadOnlySpan) int { return a.StartTime().Compare(b.StartTime()) })
	return out
}

// spanSummary describes the spans of one flow: the trace ids they share and
// their names, with the topic prefix cut off for brevity.
func (t *telemetry) spanSummary(corr, prefix string) (traceIDs []trace.TraceID, chain string, all int) {
	spans := t.traceOf(corr)
	var names []string
	for _, s := range spans {
		if id := s.SpanContext().TraceID(); !slices.Contains(traceIDs, id) {
			traceIDs = append(traceIDs, id)
		}
		// "send example.orders", or on RabbitMQ "publish example.orders" and
		// "process example.orders:<queue>": shown as "send orders".
		op, dest, _ := strings.Cut(s.Name(), " ")
		dest, _, _ = strings.Cut(strings.TrimPrefix(dest, prefix), ":")
		names = append(names, op+" "+dest)
	}
	return traceIDs, strings.Join(names, " > "), len(t.spans.Ended())
}

// metricTotals collects the metrics and sums each counter over its
// attributes (histograms: their counts).
func (t *telemetry) metricTotals(ctx context.Context) (map[string]int64, error) {
	var rm metricdata.ResourceMetrics
	if err := t.reader.Collect(ctx, &rm); err != nil {
		return nil, err
	}
	out := make(map[string]int64)
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					out[m.Name] += p.Value
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					out[m.Name] += int64(p.Count)
				}
			}
		}
	}
	return out, nil
}
