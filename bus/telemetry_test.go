package bus_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/bus/memory"
	"github.com/busline/busline/bus/telemetry"
	"github.com/busline/busline/internal/testserver"
	"github.com/busline/busline/middleware"
)

// telBroker is one broker configuration of the telemetry tests.
type telBroker struct {
	name   string
	system string
	config func(t *testing.T) bus.Config
	// dest is the messaging.destination.name of a handler's process span.
	dest func(topic, group string) string
	// send is the operation name of publishing.
	send string
}

var telBrokers = []telBroker{
	{
		name: "memory", system: memory.System, send: "send",
		config: func(*testing.T) bus.Config { return bus.Config{} },
		dest:   func(topic, _ string) string { return topic },
	},
	{
		name: "kafka", system: "kafka", send: "send",
		config: func(t *testing.T) bus.Config {
			return bus.Config{Broker: bus.BrokerKafka, Kafka: kafka.Config{Brokers: testserver.Kafka(t, 1)}}
		},
		dest: func(topic, _ string) string { return topic },
	},
	{
		name: "amqp", system: "rabbitmq", send: "publish",
		config: func(t *testing.T) bus.Config {
			return bus.Config{Broker: bus.BrokerAMQP, AMQP: amqp.Config{URL: testserver.AMQPURL(t)}}
		},
		dest: func(topic, group string) string { return topic + ":" + amqp.QueueName(topic, group) },
	},
}

func newTracing() (*tracetest.InMemoryExporter, *sdktrace.TracerProvider) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	return exp, tp
}

// runBus runs b until the test ends; stop closes it now and waits.
func runBus(t *testing.T, b *bus.Bus) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- b.Run(ctx) }()
	select {
	case <-b.Running():
	case err := <-errc:
		t.Fatalf("Run: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("bus not running after 30s")
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-errc; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// handleOne registers a handler "h" on topic, publishes one message to it,
// runs b until the handler was called, and closes b: every span has ended
// when it returns.
func handleOne(t *testing.T, b *bus.Bus, topic string) {
	t.Helper()
	done := make(chan struct{}, 1)
	if err := b.Handle("h", topic, func(context.Context, *message.Message) error {
		done <- struct{}{}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(context.Background(), topic, message.NewMessage("m1", nil)); err != nil {
		t.Fatal(err)
	}
	stop := runBus(t, b)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("handler not called within 30s")
	}
	stop()
}

func attrMap(kvs []attribute.KeyValue) map[attribute.Key]attribute.Value {
	m := make(map[attribute.Key]attribute.Value, len(kvs))
	for _, kv := range kvs {
		m[kv.Key] = kv.Value
	}
	return m
}

func wantAttrs(t *testing.T, what string, got []attribute.KeyValue, want map[string]any) {
	t.Helper()
	m := attrMap(got)
	for k, v := range want {
		g, ok := m[attribute.Key(k)]
		if !ok {
			t.Errorf("%s: no attribute %s (have %v)", what, k, got)
			continue
		}
		if fmt.Sprint(g.AsInterface()) != fmt.Sprint(v) {
			t.Errorf("%s: %s = %v, want %v", what, k, g.AsInterface(), v)
		}
	}
}

func findSpan(t *testing.T, spans tracetest.SpanStubs, name string) tracetest.SpanStub {
	t.Helper()
	for _, s := range spans {
		if s.Name == name {
			return s
		}
	}
	var names []string
	for _, s := range spans {
		names = append(names, s.Name)
	}
	t.Fatalf("no span %q among %q", name, names)
	return tracetest.SpanStub{}
}

// TestTrace checks on each broker that publish -> process -> publish ->
// process is one trace: PRODUCER send spans whose context travels in the
// metadata, CONSUMER process spans that are children of, and linked to,
// those, and what a handler publishes a child of its process span.
func TestTrace(t *testing.T) {
	for _, br := range telBrokers {
		t.Run(br.name, func(t *testing.T) {
			exp, tp := newTracing()
			cfg := br.config(t)
			cfg.Group = bustest.Name("svc")
			cfg.DeadLetterTopic = bustest.Name("dlq")
			b, err := bus.New(cfg, bus.WithTracerProvider(tp))
			if err != nil {
				t.Fatal(err)
			}
			first, second := bustest.Name("first"), bustest.Name("second")
			t.Cleanup(func() { deleteAMQP(t, cfg, map[string]string{first: "forward", second: "sink"}) })
			done := make(chan message.Metadata, 1)
			if err := b.Handle("forward", first, func(ctx context.Context, m *message.Message) error {
				if !trace.SpanFromContext(ctx).SpanContext().IsValid() {
					return middleware.Permanent(errors.New("no span in the handler's context"))
				}
				out := message.NewMessage("out-1", []byte("next"))
				out.Metadata.Set("ce_dataversion", "2")
				return b.Publish(ctx, second, out)
			}); err != nil {
				t.Fatal(err)
			}
			if err := b.Handle("sink", second, func(ctx context.Context, m *message.Message) error {
				done <- m.Metadata
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			in := message.NewMessage("in-1", []byte("start"))
			in.Metadata.Set("ce_type", "com.example.started")
			in.Metadata.Set("ce_partitionkey", "k1")
			if err := b.Publish(context.Background(), first, in); err != nil {
				t.Fatal(err)
			}
			if in.Metadata.Get("traceparent") == "" {
				t.Fatalf("no traceparent injected: %v", in.Metadata)
			}
			stop := runBus(t, b)
			var md message.Metadata
			select {
			case md = <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("message not forwarded within 30s")
			}
			stop() // every span has ended once the bus is closed
			if md.Get("traceparent") == "" {
				t.Errorf("forwarded message has no traceparent: %v", md)
			}

			spans := exp.GetSpans()
			send1 := findSpan(t, spans, br.send+" "+first)
			proc1 := findSpan(t, spans, "process "+br.dest(first, cfg.Group+".forward"))
			send2 := findSpan(t, spans, br.send+" "+second)
			proc2 := findSpan(t, spans, "process "+br.dest(second, cfg.Group+".sink"))

			tid := send1.SpanContext.TraceID()
			for _, s := range []tracetest.SpanStub{proc1, send2, proc2} {
				if s.SpanContext.TraceID() != tid {
					t.Errorf("%s: trace %s, want %s (one trace)", s.Name, s.SpanContext.TraceID(), tid)
				}
			}
			if send1.Parent.IsValid() {
				t.Errorf("first send span has a parent: %v", send1.Parent)
			}
			for _, c := range []struct {
				child, parent tracetest.SpanStub
				kind          trace.SpanKind
			}{
				{proc1, send1, trace.SpanKindConsumer},
				{send2, proc1, trace.SpanKindProducer},
				{proc2, send2, trace.SpanKindConsumer},
			} {
				if c.child.SpanKind != c.kind {
					t.Errorf("%s: kind %v, want %v", c.child.Name, c.child.SpanKind, c.kind)
				}
				if c.child.Parent.SpanID() != c.parent.SpanContext.SpanID() {
					t.Errorf("%s: parent %s, want %s (%s)", c.child.Name, c.child.Parent.SpanID(), c.parent.SpanContext.SpanID(), c.parent.Name)
				}
			}
			if send1.SpanKind != trace.SpanKindProducer {
				t.Errorf("%s: kind %v", send1.Name, send1.SpanKind)
			}
			for _, c := range []struct{ proc, send tracetest.SpanStub }{{proc1, send1}, {proc2, send2}} {
				if len(c.proc.Links) != 1 || c.proc.Links[0].SpanContext.SpanID() != c.send.SpanContext.SpanID() {
					t.Errorf("%s: links %v, want one to %s", c.proc.Name, c.proc.Links, c.send.Name)
				}
				if c.proc.Status.Code != codes.Unset {
					t.Errorf("%s: status %v", c.proc.Name, c.proc.Status)
				}
			}
			if send1.InstrumentationScope.Name != telemetry.ScopeName || send1.InstrumentationScope.SchemaURL == "" {
				t.Errorf("scope %+v", send1.InstrumentationScope)
			}

			wantAttrs(t, send1.Name, send1.Attributes, map[string]any{
				"messaging.system":           br.system,
				"messaging.operation.name":   br.send,
				"messaging.operation.type":   "send",
				"messaging.destination.name": first,
				"messaging.message.id":       "in-1",
				"cloudevents.event_type":     "com.example.started",
			})
			procWant := map[string]any{
				"messaging.system":                  br.system,
				"messaging.operation.name":          "process",
				"messaging.operation.type":          "process",
				"messaging.destination.name":        br.dest(first, cfg.Group+".forward"),
				"messaging.message.id":              "in-1",
				"messaging.message.conversation_id": "in-1",
				"busline.handler.name":              "forward",
			}
			if br.name != "amqp" {
				procWant["messaging.consumer.group.name"] = cfg.Group + ".forward"
			}
			if br.name == "kafka" {
				procWant["messaging.destination.partition.id"] = "0"
				procWant["messaging.kafka.offset"] = 0
				procWant["messaging.kafka.message.key"] = "k1"
			}
			wantAttrs(t, proc1.Name, proc1.Attributes, procWant)
			wantAttrs(t, proc2.Name, proc2.Attributes, map[string]any{
				"messaging.message.id":              "out-1",
				"messaging.message.conversation_id": "in-1",
				"busline.schema.version":            2,
				"busline.handler.name":              "sink",
			})
		})
	}
}

// TestTraceRetryAndDeadLetter checks that retries are span events on a
// process span that ends without error when a retry succeeds, and that a
// dead-lettered message's span has error status, error.type and
// busline.dlq.reason, and its dead-letter publish is a CLIENT span linked
// to the original producer span.
func TestTraceRetryAndDeadLetter(t *testing.T) {
	exp, tp := newTracing()
	b, err := bus.New(bus.Config{DeadLetterTopic: bustest.Name("dlq")}, bus.WithTracerProvider(tp),
		bus.WithStack(func(c *middleware.StackConfig) { c.Retry.InitialInterval = time.Millisecond }))
	if err != nil {
		t.Fatal(err)
	}
	topic := bustest.Name("orders")
	var mu sync.Mutex
	calls := map[string]int{}
	done := make(chan struct{}, 2)
	if err := b.Handle("h", topic, func(ctx context.Context, m *message.Message) error {
		mu.Lock()
		calls[m.UUID]++
		n := calls[m.UUID]
		mu.Unlock()
		switch {
		case m.UUID == "flaky" && n == 1:
			return errors.New("transient")
		case m.UUID == "poison":
			defer func() { done <- struct{}{} }()
			return middleware.Permanent(errors.New("bad input"))
		}
		done <- struct{}{}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"flaky", "poison"} {
		if err := b.Publish(context.Background(), topic, message.NewMessage(id, nil)); err != nil {
			t.Fatal(err)
		}
	}
	stop := runBus(t, b)
	for range 2 {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("handler not done within 10s")
		}
	}
	stop()

	var flaky, poison, dlSend, poisonSend tracetest.SpanStub
	for _, s := range exp.GetSpans() {
		id := attrMap(s.Attributes)["messaging.message.id"].AsString()
		switch {
		case s.Name == "process "+topic && id == "flaky":
			flaky = s
		case s.Name == "process "+topic && id == "poison":
			poison = s
		case s.Name == "send "+topic && id == "poison":
			poisonSend = s
		case strings.HasPrefix(s.Name, "send dlq"):
			dlSend = s
		}
	}
	if flaky.Status.Code != codes.Unset {
		t.Errorf("retried-then-succeeded span: status %v, want unset", flaky.Status)
	}
	if len(flaky.Events) != 1 || flaky.Events[0].Name != telemetry.EventRetry {
		t.Fatalf("flaky events %v, want one %s", flaky.Events, telemetry.EventRetry)
	}
	wantAttrs(t, "retry event", flaky.Events[0].Attributes, map[string]any{"busline.attempt": 1, "error.type": "handler_error"})
	wantAttrs(t, "flaky", flaky.Attributes, map[string]any{"busline.attempts": 2})

	if poison.Status.Code != codes.Error {
		t.Errorf("dead-lettered span: status %v, want error", poison.Status)
	}
	wantAttrs(t, "poison", poison.Attributes, map[string]any{"error.type": "permanent", "busline.dlq.reason": "permanent"})
	if !slices.ContainsFunc(poison.Events, func(e sdktrace.Event) bool { return e.Name == telemetry.EventDeadLetter }) {
		t.Errorf("poison events %v, want %s", poison.Events, telemetry.EventDeadLetter)
	}
	if dlSend.SpanKind != trace.SpanKindClient {
		t.Errorf("dead-letter send span %q: kind %v, want client", dlSend.Name, dlSend.SpanKind)
	}
	if dlSend.Parent.SpanID() != poison.SpanContext.SpanID() {
		t.Errorf("dead-letter send span: parent %s, want the process span %s", dlSend.Parent.SpanID(), poison.SpanContext.SpanID())
	}
	if len(dlSend.Links) != 1 || dlSend.Links[0].SpanContext.SpanID() != poisonSend.SpanContext.SpanID() {
		t.Errorf("dead-letter send span: links %v, want one to the original send span", dlSend.Links)
	}
}

// TestTelemetryOffByDefault checks that with the global no-op providers
// nothing is added to messages.
func TestTelemetryOffByDefault(t *testing.T) {
	b, err := bus.New(bus.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	m := message.NewMessage("m", nil)
	if err := b.Publish(context.Background(), "t", m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"traceparent", telemetry.KeySentAt} {
		if v := m.Metadata.Get(k); v != "" {
			t.Errorf("%s = %q with no-op providers", k, v)
		}
	}
}

// metricsOf collects r and indexes the metrics by name.
func metricsOf(t *testing.T, r sdkmetric.Reader) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != telemetry.ScopeName {
			continue
		}
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

// matches reports whether set has every attribute of want.
func matches(set attribute.Set, want map[string]any) bool {
	for k, v := range want {
		g, ok := set.Value(attribute.Key(k))
		if !ok || fmt.Sprint(g.AsInterface()) != fmt.Sprint(v) {
			return false
		}
	}
	return true
}

// sumOf adds up the points of an Int64 sum or gauge, or the counts of a
// histogram, whose attributes match want; it fails when the metric or its
// unit is not as expected.
func sumOf(t *testing.T, ms map[string]metricdata.Metrics, name, unit string, want map[string]any) int64 {
	t.Helper()
	m, ok := ms[name]
	if !ok {
		t.Fatalf("no metric %s", name)
	}
	if m.Unit != unit {
		t.Errorf("%s: unit %q, want %q", name, m.Unit, unit)
	}
	var n int64
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			if matches(p.Attributes, want) {
				n += p.Value
			}
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			if matches(p.Attributes, want) {
				n += p.Value
			}
		}
	case metricdata.Histogram[float64]:
		for _, p := range d.DataPoints {
			if matches(p.Attributes, want) {
				n += int64(p.Count)
				if name != telemetry.MetricEndToEnd && !slices.Equal(p.Bounds, []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}) {
					t.Errorf("%s: bounds %v", name, p.Bounds)
				}
			}
		}
	default:
		t.Fatalf("%s: data %T", name, m.Data)
	}
	return n
}

// TestMetrics runs a known workload on the in-process broker (one message
// handled at once, one after a retry, one dead-lettered, one duplicate)
// and checks every counter and histogram, and the queue depth gauge.
func TestMetrics(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	dlq := bustest.Name("dlq")
	b, err := bus.New(bus.Config{Group: "svc", DeadLetterTopic: dlq}, bus.WithMeterProvider(mp),
		bus.WithStack(func(c *middleware.StackConfig) { c.Retry.InitialInterval = time.Millisecond }))
	if err != nil {
		t.Fatal(err)
	}
	topic := bustest.Name("orders")
	var mu sync.Mutex
	calls := map[string]int{}
	done := make(chan string, 10)
	if err := b.Handle("h", topic, func(ctx context.Context, m *message.Message) error {
		mu.Lock()
		calls[m.UUID]++
		n := calls[m.UUID]
		mu.Unlock()
		defer func() { done <- m.UUID }()
		switch {
		case m.UUID == "flaky" && n == 1:
			return errors.New("transient")
		case m.UUID == "poison":
			return middleware.Permanent(errors.New("bad input"))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"ok", "flaky", "poison"} {
		if err := b.Publish(context.Background(), topic, message.NewMessage(id, nil)); err != nil {
			t.Fatal(err)
		}
	}

	// Before Run: the three messages wait in the group's queue.
	b.PollTelemetry(context.Background())
	ms := metricsOf(t, reader)
	group := map[string]any{"messaging.system": memory.System, "messaging.destination.name": topic, "messaging.consumer.group.name": "svc.h"}
	if n := sumOf(t, ms, telemetry.MetricQueueDepth, "{message}", group); n != 3 {
		t.Errorf("queue depth %d, want 3", n)
	}
	if n := sumOf(t, ms, telemetry.MetricQueueDepth, "{message}", map[string]any{"messaging.destination.name": dlq, "messaging.consumer.group.name": bus.DeadLetterGroup}); n != 0 {
		t.Errorf("dead-letter queue depth %d, want 0", n)
	}
	if n := sumOf(t, ms, telemetry.MetricBrokerUp, "1", nil); n != 1 {
		t.Errorf("broker up %d, want 1", n)
	}

	stop := runBus(t, b)
	for range 4 { // ok, flaky twice, poison
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("handler not done within 10s")
		}
	}
	// A duplicate of ok: acked without running the handler.
	if err := b.Publish(context.Background(), topic, message.NewMessage("ok", nil)); err != nil {
		t.Fatal(err)
	}
	b.PollTelemetry(context.Background())
	// Wait for the duplicate to be counted (no handler call to wait on).
	deadline := time.Now().Add(10 * time.Second)
	for {
		ms = metricsOf(t, reader)
		if _, ok := ms[telemetry.MetricDedupHits]; ok || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.PollTelemetry(context.Background())
	ms = metricsOf(t, reader)
	if n := sumOf(t, ms, telemetry.MetricQueueDepth, "{message}", map[string]any{"messaging.destination.name": dlq, "messaging.consumer.group.name": bus.DeadLetterGroup}); n != 1 {
		t.Errorf("dead-letter queue depth %d, want 1", n)
	}
	stop()

	ms = metricsOf(t, reader)
	sent := map[string]any{"messaging.system": memory.System, "messaging.operation.name": "send", "messaging.destination.name": topic}
	for _, c := range []struct {
		name, unit string
		attrs      map[string]any
		want       int64
	}{
		{"messaging.client.sent.messages", "{message}", sent, 4},
		{"messaging.client.sent.messages", "{message}", map[string]any{"messaging.destination.name": dlq}, 1},
		{"messaging.client.operation.duration", "s", map[string]any{"messaging.destination.name": topic, "messaging.operation.type": "send"}, 4},
		{"messaging.client.consumed.messages", "{message}", group, 4},
		{"messaging.process.duration", "s", group, 4},
		{"messaging.process.duration", "s", map[string]any{"messaging.consumer.group.name": "svc.h", "error.type": "permanent"}, 1},
		{telemetry.MetricRetries, "{retry}", map[string]any{"busline.handler.name": "h", "error.type": "handler_error"}, 1},
		{telemetry.MetricDeadLettered, "{message}", map[string]any{"busline.handler.name": "h", "busline.dlq.reason": "permanent", "messaging.destination.name": topic}, 1},
		{telemetry.MetricDedupHits, "{message}", map[string]any{"busline.handler.name": "h", "busline.dedup.state": "already-done"}, 1},
		{telemetry.MetricEndToEnd, "s", map[string]any{"busline.handler.name": "h"}, 4},
	} {
		if n := sumOf(t, ms, c.name, c.unit, c.attrs); n != c.want {
			t.Errorf("%s %v = %d, want %d", c.name, c.attrs, n, c.want)
		}
	}
	if _, ok := ms[telemetry.MetricBreakerState]; ok {
		t.Errorf("gauges still observed after Close")
	}
}

// TestMetricConsumerLag checks the Kafka consumer lag gauge: with the
// consumer paused on its first message (the handler holds it), the five
// messages published are the group's lag.
func TestMetricConsumerLag(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	b, err := bus.New(bus.Config{Broker: bus.BrokerKafka, Group: "svc", DeadLetterTopic: bustest.Name("dlq"),
		Kafka: kafka.Config{Brokers: testserver.Kafka(t, 1)}}, bus.WithMeterProvider(mp))
	if err != nil {
		t.Fatal(err)
	}
	topic := bustest.Name("orders")
	started, release, handled := make(chan struct{}, 1), make(chan struct{}), make(chan struct{}, 5)
	if err := b.Handle("h", topic, func(context.Context, *message.Message) error {
		select {
		case started <- struct{}{}:
			<-release
		default:
		}
		handled <- struct{}{}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := b.Publish(context.Background(), topic, message.NewMessage(fmt.Sprint(i), nil)); err != nil {
			t.Fatal(err)
		}
	}
	stop := runBus(t, b)
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("no message within 30s")
	}
	b.PollTelemetry(bustest.Context(t, 10*time.Second))
	ms := metricsOf(t, reader)
	want := map[string]any{"messaging.system": "kafka", "messaging.destination.name": topic,
		"messaging.consumer.group.name": "svc.h", "messaging.destination.partition.id": "0"}
	if n := sumOf(t, ms, telemetry.MetricConsumerLag, "{message}", want); n != 5 {
		t.Errorf("consumer lag %d, want 5", n)
	}
	if n := sumOf(t, ms, "messaging.client.sent.messages", "{message}", map[string]any{"messaging.system": "kafka", "messaging.destination.name": topic}); n != 5 {
		t.Errorf("sent %d, want 5", n)
	}
	close(release)
	for range 5 {
		select {
		case <-handled:
		case <-time.After(30 * time.Second):
			t.Fatal("messages not handled within 30s")
		}
	}
	stop()
}

// TestMetricQueueDepth checks the RabbitMQ queue depth gauge: messages
// published while no handler runs wait in the group's queue.
func TestMetricQueueDepth(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	group := bustest.Name("svc")
	b, err := bus.New(bus.Config{Broker: bus.BrokerAMQP, Group: group, DeadLetterTopic: bustest.Name("dlq"),
		AMQP: amqp.Config{URL: testserver.AMQPURL(t)}}, bus.WithMeterProvider(mp))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	topic := bustest.Name("orders")
	t.Cleanup(func() { deleteAMQP(t, b.Config(), map[string]string{topic: "h"}) })
	if err := b.Handle("h", topic, func(context.Context, *message.Message) error { return nil }); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := b.Publish(context.Background(), topic, message.NewMessage(fmt.Sprint(i), nil)); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]any{"messaging.system": "rabbitmq", "messaging.destination.name": topic,
		"messaging.consumer.group.name": group + ".h", "busline.queue.name": amqp.QueueName(topic, group+".h")}
	// Confirmed messages are counted by the queue at once; allow the
	// broker a moment all the same.
	deadline := time.Now().Add(5 * time.Second)
	var n int64
	for {
		b.PollTelemetry(bustest.Context(t, 5*time.Second))
		if n = sumOf(t, metricsOf(t, reader), telemetry.MetricQueueDepth, "{message}", want); n == 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n != 3 {
		t.Errorf("queue depth %d, want 3", n)
	}
}

// TestTraceNewRootOnProcess checks that WithNewRootOnProcess makes the
// process span a new trace's root, linked to the producer's span.
func TestTraceNewRootOnProcess(t *testing.T) {
	exp, tp := newTracing()
	b, err := bus.New(bus.Config{DeadLetterTopic: bustest.Name("dlq")}, bus.WithTracerProvider(tp), bus.WithNewRootOnProcess())
	if err != nil {
		t.Fatal(err)
	}
	topic := bustest.Name("t")
	handleOne(t, b, topic)
	spans := exp.GetSpans()
	send, proc := findSpan(t, spans, "send "+topic), findSpan(t, spans, "process "+topic)
	if proc.Parent.IsValid() || proc.SpanContext.TraceID() == send.SpanContext.TraceID() {
		t.Errorf("process span: parent %v, trace %s: want a new root", proc.Parent, proc.SpanContext.TraceID())
	}
	if len(proc.Links) != 1 || proc.Links[0].SpanContext.SpanID() != send.SpanContext.SpanID() {
		t.Errorf("process span links %v, want one to the send span", proc.Links)
	}
}

// TestDelayedRetryRejectedPublishMetric checks busline.publish.rejected: a
// bounded RabbitMQ queue that is full refuses a message, Publish fails with
// amqp.ErrNacked, and the counter says so.
func TestDelayedRetryRejectedPublishMetric(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	b, err := bus.New(bus.Config{Broker: bus.BrokerAMQP, Group: bustest.Name("svc"), DeadLetterTopic: bustest.Name("dlq"),
		RedeliveryDelays: bus.NoRedelivery, AMQP: amqp.Config{URL: testserver.AMQPURL(t), MaxQueueLength: 2}},
		bus.WithMeterProvider(mp))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	topic := bustest.Name("orders")
	t.Cleanup(func() { deleteAMQP(t, b.Config(), map[string]string{topic: "h"}) })
	if err := b.Handle("h", topic, func(context.Context, *message.Message) error { return nil }); err != nil {
		t.Fatal(err)
	}
	nacked := 0
	for i := range 3 {
		err := b.Publish(context.Background(), topic, message.NewMessage(fmt.Sprint(i), nil))
		switch {
		case errors.Is(err, amqp.ErrNacked):
			nacked++
		case err != nil:
			t.Fatal(err)
		}
	}
	if nacked != 1 {
		t.Errorf("%d of 3 publishes to a queue bounded at 2 refused, want 1", nacked)
	}
	if n := sumOf(t, metricsOf(t, reader), telemetry.MetricPublishRejected, "{message}", map[string]any{"messaging.system": "rabbitmq"}); n != 1 {
		t.Errorf("%s = %d, want 1", telemetry.MetricPublishRejected, n)
	}
}

// A round handed to the delayed tier is a failed round: its process span
// has an error status and error.type and a busline.redelivery event, though
// the message is acked; the round that succeeds later is OK.
func TestDelayedRetrySpanFailsTheRound(t *testing.T) {
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
	b, err := bus.New(bus.Config{RedeliveryDelays: []time.Duration{time.Millisecond}}, bus.WithTracerProvider(tp),
		bus.WithStack(func(c *middleware.StackConfig) { c.Retry = middleware.RetryConfig{MaxAttempts: 1} }))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	calls := 0
	if err := b.Handle("h", "orders", func(context.Context, *message.Message) error {
		calls++
		if calls == 1 {
			return errors.New("downstream down")
		}
		close(done)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	go b.Run(context.Background())
	<-b.Running()
	if err := b.Publish(context.Background(), "orders", message.NewMessage("m", nil)); err != nil {
		t.Fatal(err)
	}
	<-done
	if err := b.Close(bustest.Context(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	var rounds []sdktrace.ReadOnlySpan
	for _, s := range sr.Ended() {
		if s.SpanKind() == trace.SpanKindConsumer {
			rounds = append(rounds, s)
		}
	}
	if len(rounds) != 2 {
		t.Fatalf("%d process spans, want 2", len(rounds))
	}
	first, second := rounds[0], rounds[1]
	hasEvent := slices.ContainsFunc(first.Events(), func(e sdktrace.Event) bool { return e.Name == telemetry.EventRedelivery })
	if first.Status().Code != codes.Error || !hasEvent {
		t.Errorf("first round: status %v, redelivery event %v; want an error and the event", first.Status(), hasEvent)
	}
	if second.Status().Code == codes.Error {
		t.Errorf("second round: status %v, want OK", second.Status())
	}
}
