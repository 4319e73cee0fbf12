package bus

import (
	"errors"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/busline/busline/bus/broker"
	"github.com/busline/busline/internal/wmlog"
	"github.com/busline/busline/middleware"
)

// newOptions applies opts to the defaults.
func newOptions(opts []Option) options {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if o.logger == nil {
		o.logger = slog.Default()
	}
	return o
}

// watermillLogger is the logger of Watermill and of the brokers.
func (o options) watermillLogger() watermill.LoggerAdapter { return wmlog.New(o.logger) }

// Option configures a [Bus] beyond its [Config]: the extras most services
// never touch.
type Option func(*options)

type options struct {
	logger *slog.Logger
	stack  []func(*middleware.StackConfig)

	// Telemetry (telemetry.go).
	tracerProvider trace.TracerProvider
	meterProvider  metric.MeterProvider
	propagators    propagation.TextMapPropagator
	pollInterval   time.Duration
	processRoot    bool
}

// WithLogger sets the logger of the bus and of Watermill under it.
// Default: slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

// WithStack changes the default middleware stack of every handler: fn
// receives the stack configuration the bus built (dead-letter publisher and
// topic filled in) and may change any field. Handler options apply after it.
func WithStack(fn func(*middleware.StackConfig)) Option {
	return func(o *options) { o.stack = append(o.stack, fn) }
}

// WithTracerProvider sets the provider of the bus's tracer (scope
// [github.com/busline/busline/bus/telemetry.ScopeName]). Default: the global provider (otel.GetTracerProvider) as it
// is when [New] runs. When that is a no-op provider (the global one before
// otel.SetTracerProvider, or a noop.TracerProvider), the bus creates no
// spans at all and adds no cost; set the global provider before calling
// New, or pass it here.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) { o.tracerProvider = tp }
}

// WithMeterProvider sets the provider of the bus's meter (scope
// [github.com/busline/busline/bus/telemetry.ScopeName]). Default: the global provider (otel.GetMeterProvider) as it
// is when [New] runs; with a no-op provider the bus records no metrics and
// runs no broker poller.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(o *options) { o.meterProvider = mp }
}

// WithPropagators sets the propagator that injects the trace context into
// published messages' metadata and extracts it from consumed ones.
// Default: the global propagator (otel.GetTextMapPropagator) when one was
// set, else W3C Trace Context plus W3C Baggage (the headers traceparent,
// tracestate and baggage), so that traces cross the broker out of the box.
func WithPropagators(p propagation.TextMapPropagator) Option {
	return func(o *options) { o.propagators = p }
}

// WithTelemetryPollInterval sets how often the bus asks the broker for
// queue depths (in-process broker, RabbitMQ) or consumer lag (Kafka) and
// whether it answers, for the busline.queue.depth, busline.consumer.lag and
// busline.broker.up gauges. The poller runs while [Bus.Run] runs, only
// when metrics are on. Zero: [github.com/busline/busline/bus/telemetry.DefaultPollInterval]; negative: no
// polling.
func WithTelemetryPollInterval(d time.Duration) Option {
	return func(o *options) { o.pollInterval = d }
}

// WithNewRootOnProcess makes each handler's process span the root of a new
// trace that only links to the producer's span, instead of its child (the
// default). Use it when one message fans out into long workflows that
// would otherwise make one huge trace.
func WithNewRootOnProcess() Option {
	return func(o *options) { o.processRoot = true }
}

// HandlerOption configures one handler registered with [Bus.Handle].
type HandlerOption func(*handlerOptions)

type handlerOptions struct {
	stack  []func(*middleware.StackConfig)
	extra  []message.HandlerMiddleware
	sub    broker.SubscriberOptions // ordering, batch delivery, transactions
	delays []time.Duration          // nil: Config.RedeliveryDelays
}

// HandlerStack changes this handler's middleware stack: fn receives the
// configuration after the bus-wide [WithStack] changes and may change any
// field, e.g. switch steps off or tune retries.
func HandlerStack(fn func(*middleware.StackConfig)) HandlerOption {
	return func(o *handlerOptions) { o.stack = append(o.stack, fn) }
}

// HandlerMiddleware adds middleware inside the default stack, between it
// and the handler, in the order given (the first is outermost).
func HandlerMiddleware(mws ...message.HandlerMiddleware) HandlerOption {
	return func(o *handlerOptions) { o.extra = append(o.extra, mws...) }
}

// Ordering modes for [WithOrdering] (see package broker).
const (
	// OrderPartition runs one message of a partition at a time, in order;
	// partitions run in parallel. The default.
	OrderPartition = broker.OrderPartition
	// OrderKey runs messages of different keys (ce_partitionkey) of one
	// partition concurrently, each key in order; messages without a key
	// share one lane per partition.
	OrderKey = broker.OrderKey
	// OrderUnordered runs any message at any time, up to the in-flight bound.
	OrderUnordered = broker.OrderUnordered
)

// WithOrdering sets how this handler's messages may run concurrently on
// Kafka, overriding Config.Kafka.Ordering: [OrderPartition], [OrderKey] or
// [OrderUnordered]; a failing message holds back only its partition, or
// its key. The other brokers hand a subscription's messages out one at a
// time, in order, which satisfies every mode. An unknown mode makes
// [Bus.Handle] fail.
func WithOrdering(mode string) HandlerOption {
	return func(o *handlerOptions) { o.sub.Ordering = mode }
}

// WithBatchDelivery makes Kafka hand this handler's records out in batches
// of up to size records of a partition, in order, as one carrier message
// for a batch handler ([handlers.Batcher.Handle], whose Size it should
// match; register no other handler with it); each record is acked after the
// batch handler returned, and a failed batch is retried whole, then record
// by record. It implies [OrderPartition]. Other brokers hand messages out as
// usual, and the batch handler groups what is in flight within its
// MaxWait. A size below 1 makes [Bus.Handle] fail.
func WithBatchDelivery(size int) HandlerOption {
	return func(o *handlerOptions) {
		o.sub.BatchSize = size
		if size == 0 {
			o.sub.BatchSize = -1
		}
	}
}

// WithKafkaTransactions makes this handler consume-transform-produce in
// Kafka transactions, for a handler on Kafka that only publishes to Kafka:
// each poll's records, what the handler publishes with its ctx and its dead
// letters commit atomically with the consumed offsets, or abort together
// (a nack, a failed publish, a rebalance) and are handled again, their
// earlier outputs discarded; read_committed readers (every Busline
// consumer) see each output once. Effects outside Kafka still run at least
// once. The handler's stack has no dedup step (the transaction is the
// dedup) and no delayed tier; it runs in [OrderPartition] and does not go
// with another ordering or [WithBatchDelivery]. Set Config.Kafka.InstanceID
// to a stable process name, so that a restart aborts its predecessor's open
// transaction at once. The README's "Exactly-once effects" section and
// docs/benchmarks.md give the costs. On the other brokers the handler runs
// as usual, at least once with dedup.
func WithKafkaTransactions() HandlerOption {
	return func(o *handlerOptions) { o.sub.Transactions = true }
}

// WithRedeliveryDelays sets this handler's delayed redelivery tier,
// overriding Config.RedeliveryDelays: after the in-process retries, a
// message that failed with an error that is not permanent comes back to
// this handler after delays[0], then delays[1], and so on, and is
// dead-lettered after the last round. No delays switches the tier off for
// this handler. With [WithKafkaTransactions] or [WithBatchDelivery] the tier
// is off (a transaction or a batch is retried whole).
func WithRedeliveryDelays(delays ...time.Duration) HandlerOption {
	return func(o *handlerOptions) { o.delays = append([]time.Duration{}, delays...) } // never nil
}

func (o handlerOptions) validate() error {
	return errors.Join(broker.ValidateDelays(o.delays), o.sub.Validate())
}
