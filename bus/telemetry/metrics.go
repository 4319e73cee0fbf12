package telemetry

import (
	"context"
	"errors"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/semconv/v1.43.0/messagingconv"
)

// Busline's own span and metric attribute keys (never new messaging.*
// keys).
const (
	AttrHandlerName     = attribute.Key("busline.handler.name")
	AttrSchemaVersion   = attribute.Key("busline.schema.version")
	AttrDLQReason       = attribute.Key("busline.dlq.reason")
	AttrAttempt         = attribute.Key("busline.attempt")
	AttrAttempts        = attribute.Key("busline.attempts")
	AttrRetryDelay      = attribute.Key("busline.retry.delay")
	AttrRedeliveryRound = attribute.Key("busline.redelivery.round")
	AttrDedupState      = attribute.Key("busline.dedup.state")
	AttrThrottleLimit   = attribute.Key("busline.throttle.limit")
	AttrQueueName       = attribute.Key("busline.queue.name")
)

// Span event names.
const (
	EventRetry      = "busline.retry"
	EventDeadLetter = "busline.dead_letter"
	EventDuplicate  = "busline.duplicate"
	EventThrottle   = "busline.throttle_wait"
	EventDedupWait  = "busline.dedup_wait"
	EventRedelivery = "busline.redelivery"
)

// Metric names of Busline's own instruments (busline.*); the semantic
// convention ones come from messagingconv.
const (
	MetricDeadLettered  = "busline.dlq.messages"
	MetricRetries       = "busline.retries"
	MetricRedeliveries  = "busline.redeliveries"
	MetricDedupHits     = "busline.dedup.hits"
	MetricDedupWaits    = "busline.dedup.waits"
	MetricThrottleWaits = "busline.throttle.waits"
	MetricBreakerState  = "busline.breaker.state"
	MetricEndToEnd      = "busline.end_to_end.duration"
	MetricQueueDepth    = "busline.queue.depth"
	MetricConsumerLag   = "busline.consumer.lag"
	MetricBrokerUp      = "busline.broker.up"
)

// durationBuckets are the semantic conventions' advisory buckets for
// messaging durations, in seconds.
var durationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}

// endToEndBuckets extend them to an hour: messages may wait long in a
// queue.
var endToEndBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 30, 60, 300, 900, 3600}

type instruments struct {
	sent            messagingconv.ClientSentMessages
	opDuration      messagingconv.ClientOperationDuration
	consumed        messagingconv.ClientConsumedMessages
	processDuration messagingconv.ProcessDuration

	deadLettered  metric.Int64Counter
	retries       metric.Int64Counter
	redeliveries  metric.Int64Counter
	dedupHits     metric.Int64Counter
	dedupWaits    metric.Int64Counter
	throttleWaits metric.Int64Counter
	endToEnd      metric.Float64Histogram

	breakerState metric.Int64ObservableGauge
	queueDepth   metric.Int64ObservableGauge
	consumerLag  metric.Int64ObservableGauge
	brokerUp     metric.Int64ObservableGauge
}

func newInstruments(m metric.Meter) (*instruments, error) {
	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	in := &instruments{}
	var err error
	in.sent, err = messagingconv.NewClientSentMessages(m)
	check(err)
	in.opDuration, err = messagingconv.NewClientOperationDuration(m, metric.WithExplicitBucketBoundaries(durationBuckets...))
	check(err)
	in.consumed, err = messagingconv.NewClientConsumedMessages(m)
	check(err)
	in.processDuration, err = messagingconv.NewProcessDuration(m, metric.WithExplicitBucketBoundaries(durationBuckets...))
	check(err)
	in.deadLettered, err = m.Int64Counter(MetricDeadLettered, metric.WithUnit("{message}"),
		metric.WithDescription("Messages moved to the dead-letter topic, by reason."))
	check(err)
	in.retries, err = m.Int64Counter(MetricRetries, metric.WithUnit("{retry}"),
		metric.WithDescription("Handler attempts that failed and were retried."))
	check(err)
	in.redeliveries, err = m.Int64Counter(MetricRedeliveries, metric.WithUnit("{message}"),
		metric.WithDescription("Messages handed to the broker's delayed redelivery tier after their in-process retries, by error type."))
	check(err)
	in.dedupHits, err = m.Int64Counter(MetricDedupHits, metric.WithUnit("{message}"),
		metric.WithDescription("Messages not processed because their key was done (already-done): duplicates acked without effect."))
	check(err)
	in.dedupWaits, err = m.Int64Counter(MetricDedupWaits, metric.WithUnit("{message}"),
		metric.WithDescription("Messages that found their dedup key claimed by another delivery (in progress, or left by a crashed process until its lease ends) and waited for it."))
	check(err)
	in.throttleWaits, err = m.Int64Counter(MetricThrottleWaits, metric.WithUnit("{wait}"),
		metric.WithDescription("Handler attempts that waited for a rate token or a concurrency slot."))
	check(err)
	in.endToEnd, err = m.Float64Histogram(MetricEndToEnd, metric.WithUnit("s"),
		metric.WithDescription("Time from a message's creation (ce_time) or publication (busline_sent_at) to the end of its processing."),
		metric.WithExplicitBucketBoundaries(endToEndBuckets...))
	check(err)
	in.breakerState, err = m.Int64ObservableGauge(MetricBreakerState, metric.WithUnit("{state}"),
		metric.WithDescription("Circuit breaker state of a handler: 0 closed, 1 half-open, 2 open."))
	check(err)
	in.queueDepth, err = m.Int64ObservableGauge(MetricQueueDepth, metric.WithUnit("{message}"),
		metric.WithDescription("Messages waiting in a consumer group's queue (in-process broker, RabbitMQ), as last polled."))
	check(err)
	in.consumerLag, err = m.Int64ObservableGauge(MetricConsumerLag, metric.WithUnit("{message}"),
		metric.WithDescription("Records between a consumer group's committed offset and the partition's end (Kafka), as last polled."))
	check(err)
	in.brokerUp, err = m.Int64ObservableGauge(MetricBrokerUp, metric.WithUnit("1"),
		metric.WithDescription("1 when the broker answered the last poll's ping, else 0."))
	check(err)
	return in, errors.Join(errs...)
}

// register registers the observable gauges' callback with the meter.
func (t *Telemetry) register(meter metric.Meter) (metric.Registration, error) {
	m := t.m
	gauges := []metric.Observable{m.breakerState}
	if t.poll != nil {
		gauges = append(gauges, m.queueDepth, m.consumerLag, m.brokerUp)
	}
	return meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		t.breakers.Lock()
		for _, h := range t.breakerHandlers {
			o.ObserveInt64(m.breakerState, h.breaker.Load(), h.breakerOpt)
		}
		t.breakers.Unlock()
		if p := t.poll; p != nil {
			p.mu.Lock()
			defer p.mu.Unlock()
			if !p.polled {
				return nil
			}
			for _, ob := range p.obs {
				o.ObserveInt64(ob.gauge, ob.value, ob.opt)
			}
			o.ObserveInt64(m.brokerUp, p.up, t.systemOpt)
		}
		return nil
	}, gauges...)
}

// observe adds a handler's breaker to what the gauges report and its
// topic and group to what is polled.
func (t *Telemetry) observe(h *Handler) {
	if t.m == nil {
		return
	}
	if t.poll != nil {
		t.poll.mu.Lock()
		t.poll.targets = append(t.poll.targets, target{h.topic, h.group})
		t.poll.mu.Unlock()
	}
	t.breakers.Lock()
	t.breakerHandlers = append(t.breakerHandlers, h)
	t.breakers.Unlock()
}

// errCache holds the measurement options of each error.type of one set
// of attributes: base plus error.type (plus record on histograms). It
// keeps at most 64 error types; others are built on each use.
type errCache struct {
	base, record []attribute.KeyValue

	mu sync.Mutex
	m  map[string]*errOpts
}

type errOpts struct {
	add    []metric.AddOption
	record []metric.RecordOption
}

func (c *errCache) get(et string) *errOpts {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.m[et]; e != nil {
		return e
	}
	a := append(c.base[:len(c.base):len(c.base)], semconv.ErrorTypeKey.String(et))
	set := metric.WithAttributeSet(attribute.NewSet(a...))
	e := &errOpts{add: []metric.AddOption{set}, record: []metric.RecordOption{set}}
	if len(c.record) > 0 {
		e.record = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(append(a, c.record...)...))}
	}
	if c.m == nil {
		c.m = make(map[string]*errOpts)
	}
	if len(c.m) < 64 {
		c.m[et] = e
	}
	return e
}
