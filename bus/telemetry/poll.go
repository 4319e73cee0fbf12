package telemetry

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/busline/busline/bus/broker"
)

// poller refreshes, every interval while the bus runs, a cache of queue
// depths, consumer lags and broker health from the broker; the observable
// gauges' callback reads only the cache, so a slow broker never blocks a
// metric collection.
type poller struct {
	interval time.Duration

	mu      sync.Mutex // guards targets, the cache and started
	targets []target
	obs     []observation
	up      int64
	polled  bool

	pollMu sync.Mutex // serialises polls

	ctx      context.Context // cancelled by stop
	cancel   context.CancelFunc
	stop     chan struct{}
	done     chan struct{}
	started  bool
	stopOnce sync.Once
}

// target is a topic and a consumer group whose backlog is polled.
type target struct{ topic, group string }

type observation struct {
	gauge metric.Int64ObservableGauge
	value int64
	opt   metric.ObserveOption
}

func newPoller(interval time.Duration) *poller {
	ctx, cancel := context.WithCancel(context.Background())
	return &poller{interval: interval, ctx: ctx, cancel: cancel, stop: make(chan struct{}), done: make(chan struct{})}
}

// Poll asks the broker once and replaces the cache the gauges report:
// busline.broker.up from a ping, busline.queue.depth from a
// [broker.QueueDepther], busline.consumer.lag from a [broker.Lagger].
// Errors leave the entries they concern out (and mark the broker down when
// the ping fails). The poller calls it every interval; tests call it to
// poll at once.
func (t *Telemetry) Poll(ctx context.Context) {
	p := t.poll
	if p == nil {
		return
	}
	p.pollMu.Lock()
	defer p.pollMu.Unlock()
	m := t.m

	p.mu.Lock()
	targets := append([]target(nil), p.targets...)
	p.mu.Unlock()
	if t.deadLetter.topic != "" {
		targets = append(targets, t.deadLetter)
	}

	var obs []observation
	up := int64(1)
	if err := t.br.Ping(ctx); err != nil {
		up = 0
	}
	depthObs := func(x target, n int) {
		attrs := []attribute.KeyValue{t.system, semconv.MessagingDestinationName(x.topic), semconv.MessagingConsumerGroupName(x.group)}
		if q := t.desc.ConsumeDestination(x.topic, x.group).Queue; q != "" {
			attrs = append(attrs, AttrQueueName.String(q))
		}
		obs = append(obs, observation{m.queueDepth, int64(n), metric.WithAttributeSet(attribute.NewSet(attrs...))})
	}
	switch br := t.br.(type) {
	case broker.QueueDepther:
		if up == 1 {
			for _, x := range targets {
				n, err := br.QueueDepth(ctx, x.topic, x.group)
				if err != nil {
					t.logger.Debug("bus: telemetry: queue depth", slog.String("topic", x.topic), slog.Any("error", err))
					continue
				}
				depthObs(x, n)
			}
		}
	case broker.Lagger:
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

// Start starts the broker poller; the returned function stops it and
// waits for it. The bus's Run calls it; [Telemetry.Close] stops it too.
func (t *Telemetry) Start() (stop func()) {
	p := t.poll
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
			t.pollWithTimeout()
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return t.stopPoller
}

// pollWithTimeout polls once, within the interval (at most 10s); a poll
// in progress ends at once when the poller stops.
func (t *Telemetry) pollWithTimeout() {
	p := t.poll
	ctx, cancel := context.WithTimeout(p.ctx, min(p.interval, 10*time.Second))
	defer cancel()
	t.Poll(ctx)
}

// stopPoller stops the poller and waits for it; it is idempotent.
func (t *Telemetry) stopPoller() {
	p := t.poll
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

// Close stops the poller and unregisters the gauges' callbacks. The bus's
// Close calls it before closing the broker.
func (t *Telemetry) Close() {
	t.stopPoller()
	if t.reg != nil {
		_ = t.reg.Unregister()
	}
	if t.rejectedReg != nil {
		_ = t.rejectedReg.Unregister()
	}
	if t.consumerReg != nil {
		_ = t.consumerReg.Unregister()
	}
}
