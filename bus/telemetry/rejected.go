package telemetry

import (
	"context"
	"log/slog"

	"go.opentelemetry.io/otel/metric"

	"github.com/busline/busline/bus/broker"
)

// MetricPublishRejected counts the messages a full broker queue refused
// (RabbitMQ's x-overflow reject-publish): backpressure the publisher felt
// as an error.
const MetricPublishRejected = "busline.publish.rejected"

// registerRejected registers busline.publish.rejected for a broker that
// counts refused messages.
func (t *Telemetry) registerRejected(m metric.Meter, r broker.Rejecter) {
	c, err := m.Int64ObservableCounter(MetricPublishRejected, metric.WithUnit("{message}"),
		metric.WithDescription("Messages a full queue refused, each failing its Publish (backpressure)."))
	if err == nil {
		t.rejectedReg, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
			o.ObserveInt64(c, r.RejectedPublishes(), t.systemOpt)
			return nil
		}, c)
	}
	if err != nil {
		t.logger.Warn("bus: telemetry: creating the rejected-publish counter", slog.Any("error", err))
	}
}
