package bus

import (
	"context"
	"log/slog"

	"github.com/busline/busline/bus/telemetry"
	"github.com/busline/busline/middleware"
)

// newTelemetry builds the bus's telemetry (package bus/telemetry) from
// the options, on the bus's broker.
func (b *Bus) newTelemetry() *telemetry.Telemetry {
	o := b.opts
	return telemetry.New(telemetry.Config{
		TracerProvider:   o.tracerProvider,
		MeterProvider:    o.meterProvider,
		Propagators:      o.propagators,
		PollInterval:     o.pollInterval,
		NewRootOnProcess: o.processRoot,
		Logger:           b.logger,
		Broker:           b.broker,
		DeadLetterTopic:  b.cfg.DeadLetterTopic,
		DeadLetterGroup:  DeadLetterGroup,
	})
}

// observe makes o observe what the steps of cfg do. Hooks set before (by
// [WithStack]) still run, after o.
//
// MERGE: replaced by StackConfig.Observer.
func observe(cfg *middleware.StackConfig, o middleware.Observer) {
	cfg.DeadLetter.OnDeadLetter = then(o.DeadLettered, cfg.DeadLetter.OnDeadLetter)
	cfg.Retry.OnRetry = then(o.Retried, cfg.Retry.OnRetry)
	cfg.Dedup.OnDuplicate = then(o.Duplicate, cfg.Dedup.OnDuplicate)
	cfg.Dedup.OnWait = then(o.DedupWaited, cfg.Dedup.OnWait)
	cfg.Dedup.OnStoreError = then(o.DedupStoreFailed, cfg.Dedup.OnStoreError)
	cfg.Throttle.OnWait = then(o.Throttled, cfg.Throttle.OnWait)
	cfg.Breaker.OnStateChange = then(o.BreakerChanged, cfg.Breaker.OnStateChange)
	if cfg.DeadLetter.Observer == nil {
		cfg.DeadLetter.Observer = o
	}
}

// then returns a hook that calls first, then next when set.
//
// MERGE: goes with observe.
func then[I any](first, next func(I)) func(I) {
	if next == nil {
		return first
	}
	return func(info I) { first(info); next(info) }
}

// Logger returns the bus's logger (see [WithLogger]) with the attributes
// that tie a log line to the message being handled in ctx: correlation_id,
// message_id (the handled message, the causation parent of what it
// publishes), trace_id and span_id. Attributes ctx does not carry are left
// out, so outside a handler it is the bus's logger as is. The bus logs
// dead letters, retries and failed handlings with the same attributes.
func (b *Bus) Logger(ctx context.Context) *slog.Logger {
	attrs := telemetry.LogAttrs(ctx)
	if len(attrs) == 0 {
		return b.logger
	}
	args := make([]any, len(attrs))
	for i, a := range attrs {
		args[i] = a
	}
	return b.logger.With(args...)
}
