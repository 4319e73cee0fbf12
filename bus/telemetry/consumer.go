package telemetry

import (
	"context"
	"errors"
	"log/slog"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/busline/busline/bus/broker"
)

// Metric names of the Kafka consumer's gauges, observed from the
// subscriptions' own state (no broker round trip).
const (
	// MetricKafkaInFlight is the records a subscription fetched and has
	// not finished (handed to its handler, queued behind a busy key or
	// partition, or waiting out a nack delay).
	MetricKafkaInFlight = "busline.kafka.in_flight"
	// MetricKafkaPausedPartitions is the partitions a subscription paused
	// because each holds Config.Kafka.MaxInFlightPerPartition records.
	MetricKafkaPausedPartitions = "busline.kafka.paused_partitions"
	// MetricKafkaOldestInFlightAge is how long ago the oldest record a
	// subscription has not finished was fetched: a stuck record or key
	// shows here long before the lag does.
	MetricKafkaOldestInFlightAge = "busline.kafka.oldest_in_flight.age"
	// MetricKafkaLostPartitions counts partitions lost (the member's
	// session expired): their in-flight results were dropped.
	MetricKafkaLostPartitions = "busline.kafka.lost_partitions"
)

// registerConsumerStats registers the consumer gauges of a broker that
// reports consumer stats (Kafka; the metric names say so).
func (t *Telemetry) registerConsumerStats(m metric.Meter, cs broker.ConsumerStatser) {
	var errs []error
	inFlight, err := m.Int64ObservableGauge(MetricKafkaInFlight, metric.WithUnit("{record}"),
		metric.WithDescription("Records a subscription fetched and has not finished."))
	errs = append(errs, err)
	paused, err := m.Int64ObservableGauge(MetricKafkaPausedPartitions, metric.WithUnit("{partition}"),
		metric.WithDescription("Partitions paused because they hold the most records in flight allowed."))
	errs = append(errs, err)
	oldest, err := m.Float64ObservableGauge(MetricKafkaOldestInFlightAge, metric.WithUnit("s"),
		metric.WithDescription("Time since the oldest record not yet finished was fetched."))
	errs = append(errs, err)
	lost, err := m.Int64ObservableCounter(MetricKafkaLostPartitions, metric.WithUnit("{partition}"),
		metric.WithDescription("Partitions lost with the member's session; their in-flight results were dropped."))
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		t.logger.Warn("bus: telemetry: creating consumer instruments", slog.Any("error", err))
	}
	t.consumerReg, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		// One point per group and topic: the subscriptions of one
		// group and topic (several Subscribe calls) add up, the oldest
		// record is the oldest of them all.
		type gt struct{ group, topic string }
		sums := map[gt]broker.ConsumerStats{}
		var order []gt
		for _, st := range cs.ConsumerStats() {
			k := gt{st.Group, st.Topic}
			sum, seen := sums[k]
			if !seen {
				order = append(order, k)
			}
			sum.InFlight += st.InFlight
			sum.PausedPartitions += st.PausedPartitions
			sum.LostPartitions += st.LostPartitions
			sum.OldestInFlight = max(sum.OldestInFlight, st.OldestInFlight)
			sums[k] = sum
		}
		for _, k := range order {
			st := sums[k]
			opt := metric.WithAttributeSet(attribute.NewSet(t.system,
				semconv.MessagingDestinationName(k.topic), semconv.MessagingConsumerGroupName(k.group)))
			o.ObserveInt64(inFlight, int64(st.InFlight), opt)
			o.ObserveInt64(paused, int64(st.PausedPartitions), opt)
			o.ObserveFloat64(oldest, st.OldestInFlight.Seconds(), opt)
			o.ObserveInt64(lost, st.LostPartitions, opt)
		}
		return nil
	}, inFlight, paused, oldest, lost)
	if err != nil {
		t.logger.Warn("bus: telemetry: registering consumer gauges", slog.Any("error", err))
	}
}
