package telemetry

import (
	"context"
	"errors"
	"log/slog"
	"reflect"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/busline/busline/bus/broker"
	"github.com/busline/busline/middleware"
)

// ScopeName is the OpenTelemetry instrumentation scope of the bus's tracer
// and meter: the import path of package bus, which users configure.
const ScopeName = "github.com/busline/busline/bus"

// DefaultPollInterval is how often the telemetry polls the broker for
// queue depths and consumer lag when [Config.PollInterval] is zero.
const DefaultPollInterval = 15 * time.Second

// KeySentAt is the metadata key of the time a message was published (RFC
// 3339, nanoseconds, UTC). The telemetry stamps it when metrics are on and
// the message has no ce_time, to measure busline.end_to_end.duration.
const KeySentAt = "busline_sent_at"

// Version returns the version of Busline's instrumentation: the version
// of the github.com/busline/busline module in the running binary's build
// information, or "devel" when it has none.
func Version() string {
	versionOnce.Do(func() {
		version = "devel"
		bi, ok := debug.ReadBuildInfo()
		if !ok {
			return
		}
		if bi.Main.Path == modulePath && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			version = bi.Main.Version
			return
		}
		for _, d := range bi.Deps {
			if d.Path == modulePath {
				version = d.Version
			}
		}
	})
	return version
}

const modulePath = "github.com/busline/busline"

var (
	versionOnce sync.Once
	version     string
)

// Config is what [New] needs. Zero fields take the documented defaults.
type Config struct {
	// TracerProvider, MeterProvider and Propagators default to the
	// globals (otel.GetTracerProvider, ...), resolved in New.
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	Propagators    propagation.TextMapPropagator
	// PollInterval is how often the broker is polled for queue depths,
	// consumer lag and health while metrics are on. Zero:
	// [DefaultPollInterval]; negative: never.
	PollInterval time.Duration
	// NewRootOnProcess makes process spans roots linked to the producer's
	// span instead of its children.
	NewRootOnProcess bool
	// Logger logs failures, dead letters, retries and waits; nil:
	// slog.Default().
	Logger *slog.Logger
	// Broker is the broker described and polled; nil: messages are
	// described by their topics alone and nothing is polled.
	Broker Broker
	// DeadLetterTopic and DeadLetterGroup are polled beside the handlers'
	// topics and groups when DeadLetterTopic is not empty.
	DeadLetterTopic, DeadLetterGroup string
}

// Broker is what the telemetry needs of a broker: a ping, for
// busline.broker.up. It learns the rest through optional capabilities: a
// [broker.Describer] names the system, destinations and per-message facts;
// a [broker.ConsumerStatser] feeds the busline.kafka.* gauges; Depth,
// QueueDepth or Lag methods (see [Telemetry.Poll]) feed queue depth and
// consumer lag. It must be safe for concurrent use.
type Broker interface {
	Ping(ctx context.Context) error
}

// Telemetry is the tracing, metrics and logging of one bus's messages. A
// nil tracer means tracing is off; nil instruments mean metrics are off.
// Both off, it adds nothing to the hot path but a log line on failure.
// Its methods are safe for concurrent use.
type Telemetry struct {
	logger *slog.Logger
	br     Broker
	desc   broker.Describer // never nil

	tracer      trace.Tracer // nil: tracing off
	prop        propagation.TextMapPropagator
	ctxFields   []string // the propagator's fields that carry a span context
	processRoot bool

	m *instruments // nil: metrics off

	system     attribute.KeyValue
	sendOpName string
	// sendServer and processServer are the span attributes of the server
	// and the client: server.address, server.port, messaging.client.id.
	sendServer, processServer []attribute.KeyValue

	topics     sync.Map // topic name -> *topicTel
	topicCount atomic.Int32
	poll       *poller // nil: no polling
	deadLetter target  // polled when its topic is not empty

	systemOpt       metric.ObserveOption
	reg             metric.Registration // the gauges' callback; nil when metrics are off
	consumerReg     metric.Registration // the consumer gauges' callback (consumer.go)
	rejectedReg     metric.Registration // the rejected-publish counter's callback (rejected.go)
	breakers        sync.Mutex
	breakerHandlers []*Handler
}

// New resolves the providers (cfg's, else the globals) and builds the
// instruments. It starts nothing: [Telemetry.Start] starts the poller.
func New(cfg Config) *Telemetry {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	t := &Telemetry{logger: logger, br: cfg.Broker, processRoot: cfg.NewRootOnProcess,
		deadLetter: target{cfg.DeadLetterTopic, cfg.DeadLetterGroup}}
	t.desc, _ = cfg.Broker.(broker.Describer)
	if t.desc == nil {
		t.desc = topicsOnly{}
	}
	d := t.desc.Describe()
	t.system, t.sendOpName = semconv.MessagingSystemKey.String(d.System), d.SendOperation
	if t.sendOpName == "" {
		t.sendOpName = "send"
	}
	t.sendServer = serverAttrs(d.ServerAddress, d.ServerPort, d.PublishClientID)
	t.processServer = serverAttrs(d.ServerAddress, d.ServerPort, d.ConsumeClientID)

	tp := cfg.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if !isNoopTracerProvider(tp) {
		t.tracer = tp.Tracer(ScopeName,
			trace.WithInstrumentationVersion(Version()),
			trace.WithSchemaURL(semconv.SchemaURL))
	}
	t.prop = cfg.Propagators
	if t.prop == nil {
		t.prop = otel.GetTextMapPropagator()
		if len(t.prop.Fields()) == 0 { // the global default: a no-op
			t.prop = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
		}
	}
	for _, f := range t.prop.Fields() {
		if f != "baggage" {
			t.ctxFields = append(t.ctxFields, f)
		}
	}

	mp := cfg.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	if !isNoopMeterProvider(mp) {
		meter := mp.Meter(ScopeName,
			metric.WithInstrumentationVersion(Version()),
			metric.WithSchemaURL(semconv.SchemaURL))
		m, err := newInstruments(meter)
		if err != nil {
			// The SDK returns working instruments along with the error
			// (e.g. an invalid name); report it once and go on.
			logger.Warn("bus: telemetry: creating instruments", slog.Any("error", err))
		}
		t.m = m
		t.systemOpt = metric.WithAttributeSet(attribute.NewSet(t.system))
		interval := cfg.PollInterval
		if interval == 0 {
			interval = DefaultPollInterval
		}
		if interval > 0 && cfg.Broker != nil {
			t.poll = newPoller(interval)
		}
		if t.reg, err = t.register(meter); err != nil {
			logger.Warn("bus: telemetry: registering gauges", slog.Any("error", err))
		}
		if cs, ok := cfg.Broker.(broker.ConsumerStatser); ok {
			t.registerConsumerStats(meter, cs)
		}
		if r, ok := cfg.Broker.(broker.Rejecter); ok {
			t.registerRejected(meter, r)
		}
	}
	return t
}

// Tracing reports whether tracing is on (a recording tracer provider).
func (t *Telemetry) Tracing() bool { return t.tracer != nil }

// Metrics reports whether metrics are on (a recording meter provider).
func (t *Telemetry) Metrics() bool { return t.m != nil }

// topicsOnly describes a broker that describes nothing: destinations are
// topics, groups are consumer groups.
type topicsOnly struct{}

func (topicsOnly) Describe() broker.Description        { return broker.Description{} }
func (topicsOnly) SendDestination(topic string) string { return topic }
func (topicsOnly) ConsumeDestination(topic, group string) broker.Destination {
	return broker.Destination{Name: topic, Group: group}
}
func (topicsOnly) MessageFacts(context.Context, *message.Message) broker.MessageFacts {
	return broker.MessageFacts{}
}
func (topicsOnly) PublishErrorType(error) string { return "" }

// serverAttrs returns server.address, server.port and messaging.client.id,
// each where known.
func serverAttrs(host string, port int, clientID string) []attribute.KeyValue {
	var attrs []attribute.KeyValue
	if host != "" {
		attrs = append(attrs, semconv.ServerAddress(host))
		if port > 0 {
			attrs = append(attrs, semconv.ServerPort(port))
		}
	}
	if clientID != "" {
		attrs = append(attrs, semconv.MessagingClientID(clientID))
	}
	return attrs
}

// isNoopTracerProvider reports whether tp creates only non-recording
// spans: the noop package's provider, or the global provider before
// otel.SetTracerProvider was called (it delegates to nothing yet).
func isNoopTracerProvider(tp trace.TracerProvider) bool {
	switch tp.(type) {
	case tracenoop.TracerProvider, *tracenoop.TracerProvider:
		return true
	}
	return isGlobalDelegate(tp)
}

func isNoopMeterProvider(mp metric.MeterProvider) bool {
	switch mp.(type) {
	case metricnoop.MeterProvider, *metricnoop.MeterProvider:
		return true
	}
	return isGlobalDelegate(mp)
}

// isGlobalDelegate reports whether v is the otel package's default global
// provider, which otel.Get*Provider returns until a provider is set (after
// that they return the provider set). OpenTelemetry exports no way to ask,
// so its type's package path is compared.
func isGlobalDelegate(v any) bool {
	t := reflect.TypeOf(v)
	if t == nil {
		return true
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t.PkgPath() == "go.opentelemetry.io/otel/internal/global"
}

// Stamp injects the span context of ctx into msgs as their creation
// context (traceparent, tracestate, baggage) with the propagator, when
// tracing is on and ctx carries a span; a message that has a creation
// context keeps it. The bus's Stamp calls it.
func (t *Telemetry) Stamp(ctx context.Context, msgs []*message.Message) {
	if t.tracer == nil || !trace.SpanContextFromContext(ctx).IsValid() {
		return
	}
	for _, m := range msgs {
		if m != nil && !t.hasCreationContext(m.Metadata) {
			t.prop.Inject(ctx, propagation.MapCarrier(m.Metadata))
		}
	}
}

func (t *Telemetry) hasCreationContext(md message.Metadata) bool {
	for _, f := range t.ctxFields {
		if md[f] != "" {
			return true
		}
	}
	return false
}

// errorType is the error.type of a handling error: "canceled" for
// shutdown, else the dead-letter reason code ([middleware.ErrorType]).
func errorType(err error) string {
	if errors.Is(err, context.Canceled) {
		return "canceled"
	}
	return middleware.ErrorType(err)
}
