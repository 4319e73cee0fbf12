package bus

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/semconv/v1.43.0/messagingconv"
	"go.opentelemetry.io/otel/trace"

	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/middleware"
	"github.com/busline/busline/schema"
)

// Metric names of Busline's own instruments (busline.*); the semantic
// convention ones come from messagingconv.
const (
	MetricDeadLettered  = "busline.dlq.messages"
	MetricRetries       = "busline.retries"
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

// hooks makes the bus's telemetry the stack's observer for handler h:
// span events, busline.* counters, breaker state and log lines. Observers
// already set (the stack's or a step's own) are told after the bus's own.
func (t *telemetry) hooks(cfg *middleware.StackConfig, h *handlerTel) {
	wrap := func(next middleware.Observer) middleware.Observer {
		return &telObserver{t: t, h: h, next: next}
	}
	if cfg.DeadLetter.Observer != nil {
		cfg.DeadLetter.Observer = wrap(cfg.DeadLetter.Observer)
	}
	if cfg.Dedup.Observer != nil {
		cfg.Dedup.Observer = wrap(cfg.Dedup.Observer)
	}
	if cfg.Breaker.Observer != nil {
		cfg.Breaker.Observer = wrap(cfg.Breaker.Observer)
	}
	if cfg.Retry.Observer != nil {
		cfg.Retry.Observer = wrap(cfg.Retry.Observer)
	}
	if cfg.Throttle.Observer != nil {
		cfg.Throttle.Observer = wrap(cfg.Throttle.Observer)
	}
	next := cfg.Observer
	if next == nil {
		next = middleware.NopObserver{}
	}
	cfg.Observer = wrap(next)
}

// telObserver is the bus's [middleware.Observer] for one handler; next is
// told after it.
type telObserver struct {
	t    *telemetry
	h    *handlerTel
	next middleware.Observer
}

// DeadLettered implements [middleware.Observer].
func (o *telObserver) DeadLettered(info middleware.DeadLetterInfo) {
	t, h, m := o.t, o.h, o.t.m
	ctx := info.Message.Context()
	if pc := procFromContext(ctx); pc != nil {
		pc.deadLetter = info.Reason
		if info.Err != nil {
			pc.dlqErr = info.Err.Error()
		}
	}
	if sp := trace.SpanFromContext(ctx); sp.IsRecording() {
		sp.SetAttributes(AttrDLQReason.String(info.Reason))
		sp.AddEvent(EventDeadLetter, trace.WithAttributes(
			AttrDLQReason.String(info.Reason),
			attribute.String("busline.dlq.topic", info.Topic),
			AttrAttempts.Int(attemptsOf(info)),
		))
	}
	if m != nil {
		attrs := []attribute.KeyValue{AttrDLQReason.String(info.Reason)}
		if et := info.Message.Metadata[schema.KeyType]; et != "" {
			attrs = append(attrs, semconv.CloudEventsEventType(et))
		}
		m.deadLettered.Add(ctx, 1, h.withAttrs(attrs...))
	}
	if t.logger.Enabled(ctx, slog.LevelWarn) {
		t.logger.LogAttrs(ctx, slog.LevelWarn, "bus: message dead-lettered",
			append(messageLogAttrs(ctx, info.Message),
				slog.String("handler", h.name),
				slog.String("topic", h.topic),
				slog.String("dead_letter_topic", info.Topic),
				slog.String("reason", info.Reason),
				slog.Int("attempts", attemptsOf(info)),
				slog.Any("error", info.Err))...)
	}
	o.next.DeadLettered(info)
}

// Retried implements [middleware.Observer].
func (o *telObserver) Retried(info middleware.RetryInfo) {
	t, h, m := o.t, o.h, o.t.m
	ctx := info.Message.Context()
	et := errorType(info.Err)
	if pc := procFromContext(ctx); pc != nil {
		pc.attempts = info.Attempt + 1
	}
	if sp := trace.SpanFromContext(ctx); sp.IsRecording() {
		sp.AddEvent(EventRetry, trace.WithAttributes(
			AttrAttempt.Int(info.Attempt),
			semconv.ErrorTypeKey.String(et),
			AttrRetryDelay.Float64(info.Delay.Seconds()),
		))
	}
	if m != nil {
		m.retries.Add(ctx, 1, h.withAttrs(semconv.ErrorTypeKey.String(et)))
	}
	if t.logger.Enabled(ctx, slog.LevelDebug) {
		t.logger.LogAttrs(ctx, slog.LevelDebug, "bus: handler attempt failed, retrying",
			append(messageLogAttrs(ctx, info.Message),
				slog.String("handler", h.name),
				slog.Int("attempt", info.Attempt),
				slog.Duration("delay", info.Delay),
				slog.Any("error", info.Err))...)
	}
	o.next.Retried(info)
}

// Duplicate implements [middleware.Observer].
func (o *telObserver) Duplicate(info middleware.DedupInfo) {
	h, m := o.h, o.t.m
	ctx := info.Message.Context()
	state := AttrDedupState.String(info.State.String())
	if sp := trace.SpanFromContext(ctx); sp.IsRecording() {
		sp.SetAttributes(state)
		sp.AddEvent(EventDuplicate, trace.WithAttributes(state))
	}
	if m != nil {
		m.dedupHits.Add(ctx, 1, h.withAttrs(state))
	}
	o.next.Duplicate(info)
}

// DedupWaited implements [middleware.Observer].
func (o *telObserver) DedupWaited(info middleware.DedupInfo) {
	t, h, m := o.t, o.h, o.t.m
	ctx := info.Message.Context()
	state := AttrDedupState.String(info.State.String())
	if sp := trace.SpanFromContext(ctx); sp.IsRecording() {
		sp.AddEvent(EventDedupWait, trace.WithAttributes(state))
	}
	if m != nil {
		m.dedupWaits.Add(ctx, 1, h.withAttrs())
	}
	// One line per message, however long it waits.
	if t.logger.Enabled(ctx, slog.LevelInfo) {
		t.logger.LogAttrs(ctx, slog.LevelInfo, "bus: message is in progress elsewhere, waiting for its dedup claim to end",
			append(messageLogAttrs(ctx, info.Message),
				slog.String("handler", h.name),
				slog.String("topic", h.topic),
				slog.String("dedup_key", info.Key))...)
	}
	o.next.DedupWaited(info)
}

// DedupStoreFailed implements [middleware.Observer].
func (o *telObserver) DedupStoreFailed(info middleware.DedupInfo) {
	t, h := o.t, o.h
	ctx := info.Message.Context()
	if t.logger.Enabled(ctx, slog.LevelWarn) {
		t.logger.LogAttrs(ctx, slog.LevelWarn, "bus: dedup store "+info.Op+" failed",
			append(messageLogAttrs(ctx, info.Message),
				slog.String("handler", h.name),
				slog.String("dedup_key", info.Key),
				slog.Any("error", info.Err))...)
	}
	o.next.DedupStoreFailed(info)
}

// Throttled implements [middleware.Observer].
func (o *telObserver) Throttled(info middleware.ThrottleInfo) {
	h, m := o.h, o.t.m
	ctx := info.Message.Context()
	limit := AttrThrottleLimit.String(info.Limit)
	if sp := trace.SpanFromContext(ctx); sp.IsRecording() {
		sp.AddEvent(EventThrottle, trace.WithAttributes(limit, attribute.Float64("busline.throttle.waited", info.Waited.Seconds())))
	}
	if m != nil {
		m.throttleWaits.Add(ctx, 1, h.withAttrs(limit))
	}
	o.next.Throttled(info)
}

// BreakerChanged implements [middleware.Observer].
func (o *telObserver) BreakerChanged(info middleware.BreakerInfo) {
	t, h := o.t, o.h
	h.breaker.Store(int64(info.To))
	// Called under the breaker's lock: log without blocking work.
	t.logger.LogAttrs(context.Background(), slog.LevelInfo, "bus: circuit breaker state changed",
		slog.String("handler", h.name), slog.String("from", info.From.String()), slog.String("to", info.To.String()))
	o.next.BreakerChanged(info)
}

func attemptsOf(info middleware.DeadLetterInfo) int {
	if n, err := strconv.Atoi(info.Message.Metadata[middleware.KeyDLQAttempts]); err == nil {
		return n
	}
	return 1
}

// poller refreshes, every interval while the bus runs, a cache of queue
// depths, consumer lags and broker health from the broker; the observable
// gauges' callback reads only the cache, so a slow broker never blocks a
// metric collection.
type poller struct {
	t        *telemetry
	interval time.Duration

	mu       sync.Mutex // guards handlers, the cache and pollMu use
	handlers []*handlerTel
	obs      []observation
	up       int64
	polled   bool

	pollMu sync.Mutex // serialises polls

	ctx      context.Context // cancelled by stop
	cancel   context.CancelFunc
	stop     chan struct{}
	done     chan struct{}
	started  bool
	stopOnce sync.Once
}

type observation struct {
	gauge metric.Int64ObservableGauge
	value int64
	opt   metric.ObserveOption
}

func newPoller(t *telemetry, interval time.Duration) *poller {
	ctx, cancel := context.WithCancel(context.Background())
	return &poller{t: t, interval: interval, ctx: ctx, cancel: cancel, stop: make(chan struct{}), done: make(chan struct{})}
}

// pollHandler adds a registered handler to what is polled and observed.
func (t *telemetry) pollHandler(h *handlerTel) {
	if t.m == nil {
		return
	}
	if t.poll != nil {
		t.poll.mu.Lock()
		t.poll.handlers = append(t.poll.handlers, h)
		t.poll.mu.Unlock()
	}
	t.breakers.Lock()
	t.breakerHandlers = append(t.breakerHandlers, h)
	t.breakers.Unlock()
}

// register registers the observable gauges' callback with the meter.
func (t *telemetry) register(meter metric.Meter) (metric.Registration, error) {
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

// Broker capabilities the poller uses.
type (
	depther      interface{ Depth(topic, group string) int }
	queueDepther interface {
		QueueDepth(ctx context.Context, topic, group string) (int, error)
	}
	lagger interface {
		Lag(ctx context.Context, group string) (map[string]map[int32]int64, error)
	}
)

// pollOnce asks the broker once and replaces the cache. Errors leave the
// entries they concern out (and mark the broker down when Ping fails).
func (b *Bus) pollOnce(ctx context.Context) {
	p := b.tel.poll
	if p == nil {
		return
	}
	p.pollMu.Lock()
	defer p.pollMu.Unlock()
	t, m := b.tel, b.tel.m

	p.mu.Lock()
	handlers := append([]*handlerTel(nil), p.handlers...)
	p.mu.Unlock()

	type tg struct{ topic, group string }
	targets := make([]tg, 0, len(handlers)+1)
	for _, h := range handlers {
		targets = append(targets, tg{h.topic, h.group})
	}
	targets = append(targets, tg{b.cfg.DeadLetterTopic, DeadLetterGroup})

	var obs []observation
	up := int64(1)
	if err := b.broker.Ping(ctx); err != nil {
		up = 0
	}
	depthObs := func(topic, group, queue string, n int) {
		attrs := []attribute.KeyValue{t.system, semconv.MessagingDestinationName(topic), semconv.MessagingConsumerGroupName(group)}
		if queue != "" {
			attrs = append(attrs, AttrQueueName.String(queue))
		}
		obs = append(obs, observation{m.queueDepth, int64(n), metric.WithAttributeSet(attribute.NewSet(attrs...))})
	}
	switch br := b.broker.(type) {
	case depther:
		for _, x := range targets {
			depthObs(x.topic, x.group, "", br.Depth(x.topic, x.group))
		}
	case queueDepther:
		if up == 1 {
			for _, x := range targets {
				n, err := br.QueueDepth(ctx, x.topic, x.group)
				if err != nil {
					t.logger.Debug("bus: telemetry: queue depth", slog.String("topic", x.topic), slog.Any("error", err))
					continue
				}
				depthObs(x.topic, x.group, amqp.QueueName(x.topic, x.group), n)
			}
		}
	case lagger:
		if up == 1 {
			byGroup := map[string][]string{}
			var groups []string
			for _, x := range targets {
				if _, ok := byGroup[x.group]; !ok {
					groups = append(groups, x.group)
				}
				byGroup[x.group] = append(byGroup[x.group], x.topic)
			}
			for _, g := range groups {
				lag, err := br.Lag(ctx, g)
				if err != nil {
					t.logger.Debug("bus: telemetry: consumer lag", slog.String("group", g), slog.Any("error", err))
					continue
				}
				for _, topic := range byGroup[g] {
					for part, n := range lag[topic] {
						set := attribute.NewSet(t.system, semconv.MessagingDestinationName(topic),
							semconv.MessagingConsumerGroupName(g),
							semconv.MessagingDestinationPartitionID(strconv.Itoa(int(part))))
						obs = append(obs, observation{m.consumerLag, n, metric.WithAttributeSet(set)})
					}
				}
			}
		}
	}
	p.mu.Lock()
	p.obs, p.up, p.polled = obs, up, true
	p.mu.Unlock()
}

// startTelemetry starts the broker poller; the returned function stops it
// and waits for it. Run calls it.
func (b *Bus) startTelemetry() (stop func()) {
	p := b.tel.poll
	if p == nil {
		return func() {}
	}
	p.mu.Lock()
	if p.started {
		p.mu.Unlock()
		return func() {}
	}
	p.started = true
	p.mu.Unlock()
	go func() {
		defer close(p.done)
		tick := time.NewTicker(p.interval)
		defer tick.Stop()
		for {
			b.pollWithTimeout()
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return b.stopPoller
}

// pollWithTimeout polls once, within the interval (at most 10s); a poll
// in progress ends at once when the poller stops.
func (b *Bus) pollWithTimeout() {
	p := b.tel.poll
	ctx, cancel := context.WithTimeout(p.ctx, min(p.interval, 10*time.Second))
	defer cancel()
	b.pollOnce(ctx)
}

// stopPoller stops the poller and waits for it; it is idempotent.
func (b *Bus) stopPoller() {
	p := b.tel.poll
	if p == nil {
		return
	}
	p.stopOnce.Do(func() {
		close(p.stop)
		p.cancel()
	})
	p.mu.Lock()
	started := p.started
	p.started = true // no start after a stop
	p.mu.Unlock()
	if started {
		<-p.done
	} else {
		close(p.done)
	}
}

// stopTelemetry stops the poller and unregisters the gauges' callback.
// Close calls it before closing the broker.
func (b *Bus) stopTelemetry() {
	b.stopPoller()
	if b.tel.reg != nil {
		_ = b.tel.reg.Unregister()
	}
	if b.tel.consumerReg != nil {
		_ = b.tel.consumerReg.Unregister()
	}
}
