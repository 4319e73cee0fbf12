package bus

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

	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/middleware"
)

// ScopeName is the OpenTelemetry instrumentation scope of the bus's tracer
// and meter: this package's import path.
//
// # Telemetry
//
// The bus follows the OpenTelemetry messaging semantic conventions
// (semconv 1.43.0, its schema URL on the tracer and meter):
//
//   - Publishing makes one "send {topic}" PRODUCER span per message ("publish
//     {exchange}" on RabbitMQ, whose conventions name the operation so) and injects its context into the message's
//     metadata with the propagator: traceparent, tracestate, baggage. A
//     message that already carries a span context (forwarded, dead-lettered,
//     replayed) keeps it; its send span is then a CLIENT span linked to it.
//   - Each handler runs inside a "process {destination}" CONSUMER span, a
//     child of the producer's span and linked to it ([WithNewRootOnProcess]:
//     link only). The handler's ctx carries it, so what the handler
//     publishes with ctx is its child. Retries, dead letters, duplicates and
//     throttle waits are span events; a message a retry saved ends without
//     error; failures and dead letters set status Error and error.type (no
//     RecordError).
//   - Metrics: the four messaging metrics and busline.* (see the Metric*
//     constants and docs/monitoring.md). Measurements are recorded without
//     the span context: no exemplars, which keeps the hot path cheap.
//
// Providers come from [WithTracerProvider], [WithMeterProvider] and
// [WithPropagators], else the globals, resolved once in [New]. No-op
// providers (the globals before they are set) switch tracing or metrics
// off entirely: nothing is added to messages or to the hot path. The
// default propagator is the global one once set, else W3C Trace Context
// plus Baggage, so traces cross brokers without any set-up.
const ScopeName = "github.com/busline/busline/bus"

// DefaultTelemetryPollInterval is how often the bus polls the broker for
// queue depths and consumer lag when [WithTelemetryPollInterval] is not
// given.
const DefaultTelemetryPollInterval = 15 * time.Second

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

// Metadata keys the telemetry reads and writes.
const (
	// KeySentAt is the time a message was published (RFC 3339,
	// nanoseconds, UTC). The bus stamps it when metrics are on and the
	// message has no ce_time, to measure busline.end_to_end.duration.
	KeySentAt = "busline_sent_at"
)

// telemetry is the bus's tracing, metrics and logging of messages. A nil
// tracer means tracing is off; nil instruments mean metrics are off. Both
// off, it adds nothing to the hot path but a log line on failure.
type telemetry struct {
	logger *slog.Logger
	broker string // Config.Broker

	tracer      trace.Tracer // nil: tracing off
	prop        propagation.TextMapPropagator
	ctxFields   []string // the propagator's fields that carry a span context
	processRoot bool

	m *instruments // nil: metrics off

	system     attribute.KeyValue
	sendOpName string // "send", or "publish" on RabbitMQ
	// sendServer and processServer are the span attributes of the server
	// and the client: server.address, server.port, messaging.client.id
	// (none on the in-process broker).
	sendServer, processServer []attribute.KeyValue

	topics     sync.Map // topic name -> *topicTel
	topicCount atomic.Int32
	handlers   []*handlerTel // guarded by Bus.mu (Handle)
	poll       *poller       // nil: no polling

	systemOpt       metric.ObserveOption
	reg             metric.Registration // the gauges' callback; nil when metrics are off
	consumerReg     metric.Registration // the consumer gauges' callback (telemetry_consumer.go)
	meter           metric.Meter        // nil when metrics are off
	breakers        sync.Mutex
	breakerHandlers []*handlerTel
}

// newTelemetry resolves the providers (options, else the globals) and
// builds the instruments.
func newTelemetry(o options, cfg Config, logger *slog.Logger) *telemetry {
	t := &telemetry{logger: logger, broker: cfg.Broker, processRoot: o.processRoot}
	switch cfg.Broker {
	case BrokerKafka:
		t.system, t.sendOpName = semconv.MessagingSystemKafka, "send"
		host, port := cfg.Kafka.ServerAddress()
		id := cfg.Kafka.EffectiveClientID()
		t.sendServer = serverAttrs(host, port, id)
		t.processServer = t.sendServer
	case BrokerAMQP:
		t.system, t.sendOpName = semconv.MessagingSystemRabbitMQ, "publish"
		host, port := cfg.AMQP.ServerAddress()
		t.sendServer = serverAttrs(host, port, amqp.PublishConnectionName)
		t.processServer = serverAttrs(host, port, amqp.ConsumeConnectionName)
	default:
		t.system, t.sendOpName = semconv.MessagingSystemKey.String(SystemMemory), "send"
	}

	tp := o.tracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if !isNoopTracerProvider(tp) {
		t.tracer = tp.Tracer(ScopeName,
			trace.WithInstrumentationVersion(Version()),
			trace.WithSchemaURL(semconv.SchemaURL))
	}
	t.prop = o.propagators
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

	mp := o.meterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	if !isNoopMeterProvider(mp) {
		meter := mp.Meter(ScopeName,
			metric.WithInstrumentationVersion(Version()),
			metric.WithSchemaURL(semconv.SchemaURL))
		t.meter = meter
		m, err := newInstruments(meter)
		if err != nil {
			// The SDK returns working instruments along with the error
			// (e.g. an invalid name); report it once and go on.
			logger.Warn("bus: telemetry: creating instruments", slog.Any("error", err))
		}
		t.m = m
		t.systemOpt = metric.WithAttributeSet(attribute.NewSet(t.system))
		interval := o.pollInterval
		if interval == 0 {
			interval = DefaultTelemetryPollInterval
		}
		if interval > 0 {
			t.poll = newPoller(t, interval)
		}
		if t.reg, err = t.register(meter); err != nil {
			logger.Warn("bus: telemetry: registering gauges", slog.Any("error", err))
		}
	}
	return t
}

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

// SystemMemory is the messaging.system attribute value of the in-process
// broker, which the semantic conventions do not list.
const SystemMemory = "busline.memory"

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
// that they return the provider set).
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

// instrumentPublisher wraps the broker's publisher with tracing and
// metrics. New calls it once, after the broker exists: it also sets up the
// bus's telemetry.
func (b *Bus) instrumentPublisher(p message.Publisher) message.Publisher {
	b.tel = newTelemetry(b.opts, b.cfg, b.logger)
	b.tel.registerConsumerStats(b.broker)
	if b.tel.tracer == nil && b.tel.m == nil {
		return p
	}
	return &instrumentedPublisher{next: p, t: b.tel}
}

// instrumentHandler returns the outermost middleware of a handler: its
// process span and metrics, and the log line of a failure.
func (b *Bus) instrumentHandler(name, topic, group string) message.HandlerMiddleware {
	return b.tel.handlerMiddleware(b.tel.handler(name, topic, group))
}

// instrumentStack sets the telemetry hooks of a handler's stack. Hooks set
// before (by [WithStack]) still run, after the bus's own.
func (b *Bus) instrumentStack(cfg *middleware.StackConfig, name, topic, group string) {
	b.tel.hooks(cfg, b.tel.handler(name, topic, group))
}

// handler returns the telemetry state of handler name, creating it.
func (t *telemetry) handler(name, topic, group string) *handlerTel {
	for _, h := range t.handlers {
		if h.name == name {
			return h
		}
	}
	h := newHandlerTel(t, name, topic, group)
	t.handlers = append(t.handlers, h)
	return h
}

// errorType is the error.type of a handling error: "canceled" for
// shutdown, else the dead-letter reason code ([middleware.ErrorType]).
func errorType(err error) string {
	if errors.Is(err, context.Canceled) {
		return "canceled"
	}
	return middleware.ErrorType(err)
}
