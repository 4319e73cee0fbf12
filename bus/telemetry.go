package bus

import (
	"context"
	"log/slog"

	"github.com/busline/busline/bus/telemetry"
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

// Logger returns the bus's logger (see [WithLogger]) with the attributes
// that tie a log line to the message handled in ctx (correlation_id,
// message_id, trace_id, span_id: telemetry.LogAttrs); outside a handler it
// is the bus's logger as is. The bus logs with the same attributes.
func (b *Bus) Logger(ctx context.Context) *slog.Logger { return telemetry.Logger(b.logger, ctx) }
