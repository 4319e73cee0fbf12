package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus/broker"
	"github.com/busline/busline/bus/telemetry"
	"github.com/busline/busline/internal/drain"
	"github.com/busline/busline/internal/workers"
	"github.com/busline/busline/middleware"
)

// HandlerFunc handles one message. ctx is the message's context: it carries
// the correlation id, the attempt number and, later, the trace, and
// [Bus.Publish] called with it stamps them on what the handler publishes.
// Returning nil acks the message; an error is retried, then dead-lettered
// (at once when [Permanent]).
type HandlerFunc func(ctx context.Context, msg *message.Message) error

// Bus is an event bus on one broker: it publishes messages and runs
// handlers inside Busline's middleware stack on a Watermill router it owns.
// Its methods are safe for concurrent use. Register handlers with
// [Bus.Handle] before [Bus.Run].
type Bus struct {
	cfg    Config
	opts   options
	logger *slog.Logger
	broker broker.Broker
	pub    message.Publisher
	router *message.Router
	drain  broker.Drainer
	gate   *drain.Gate // nil when the broker drains itself
	stack  middleware.StackConfig
	tel    *telemetry.Telemetry

	mu        sync.Mutex
	state     state
	closing   atomic.Bool          // state == stateClosing, read without the lock
	stopping  chan struct{}        // closed when Close begins: StackConfig.Stopping
	pubClosed atomic.Bool          // Close is closing the publisher: no handler may publish
	handlers  map[string]string    // name -> topic
	subs      []message.Subscriber // handlers'
	extraSubs []message.Subscriber // DeadLetters'
	workers   workers.Group        // AddWorker's (worker.go)

	closeOnce sync.Once
	closeErr  error
	closed    chan struct{}
}

type state int

const (
	stateNew state = iota
	stateRunning
	stateClosing
)

// New builds a bus from cfg: it validates cfg (reporting every problem at
// once), connects to the broker and prepares the dead-letter topic. The bus
// runs nothing until [Bus.Run].
func New(cfg Config, opts ...Option) (*Bus, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	o := newOptions(opts)
	br, err := openBroker(cfg, o)
	if err != nil {
		return nil, err
	}
	b := &Bus{
		cfg:      cfg,
		opts:     o,
		logger:   o.logger,
		broker:   br,
		handlers: make(map[string]string),
		closed:   make(chan struct{}),
		stopping: make(chan struct{}),
	}
	b.drain, _ = br.(broker.Drainer)
	if b.drain == nil { // the bus drains a broker that does not drain itself
		b.gate = drain.NewGate()
		b.drain = b.gate
	}
	b.tel = b.newTelemetry()
	b.pub = b.tel.Publisher(b.broker.Publisher())

	if b.router, err = message.NewRouter(message.RouterConfig{CloseTimeout: cfg.ShutdownTimeout}, o.watermillLogger()); err != nil {
		b.broker.Close()
		return nil, fmt.Errorf("bus: router: %w", err)
	}

	// The dead-letter topic keeps what it receives for the group
	// "deadletter", which the dead-letter tools read.
	ctx, cancel := context.WithTimeout(context.Background(), prepareTimeout)
	defer cancel()
	if err := b.broker.Prepare(ctx, cfg.DeadLetterTopic, DeadLetterGroup); err != nil {
		b.broker.Close()
		return nil, fmt.Errorf("bus: prepare dead-letter topic %s: %w", cfg.DeadLetterTopic, err)
	}

	b.stack = middleware.StackConfig{
		Stopping: b.stopping,
		DeadLetter: middleware.DeadLetterConfig{
			Publisher: b.pub,
			Topic:     cfg.DeadLetterTopic,
		},
	}
	for _, fn := range o.stack {
		fn(&b.stack)
	}
	return b, nil
}

// prepareTimeout bounds declaring a topic and a group's queue on the broker.
const prepareTimeout = 30 * time.Second

// DeadLetterGroup is the consumer group that keeps the dead-letter topic's
// messages for inspection and replay.
const DeadLetterGroup = "deadletter"

// Config returns the bus's configuration with defaults filled in.
func (b *Bus) Config() Config { return b.cfg }

// Handle registers h as handler name for topic, inside the default
// middleware stack changed by opts. Names are unique per bus; the handler
// consumes as consumer group "<Config.Group>.<name>", and the topic is
// prepared at once so that messages published before [Bus.Run] wait for it.
// Handle must be called before Run.
func (b *Bus) Handle(name, topic string, h HandlerFunc, opts ...HandlerOption) error {
	if name == "" || topic == "" {
		return errors.New("bus: handler name and topic must not be empty")
	}
	if h == nil {
		return errors.New("bus: nil handler")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.registrable(); err != nil {
		return err
	}
	if _, dup := b.handlers[name]; dup {
		return fmt.Errorf("bus: handler %q is already registered", name)
	}
	var ho handlerOptions
	for _, o := range opts {
		o(&ho)
	}
	if err := ho.validate(); err != nil {
		return fmt.Errorf("bus: handler %q: %w", name, err)
	}
	stack := b.stack
	stack.Name = name
	group := b.cfg.Group + "." + name
	for _, fn := range ho.stack {
		fn(&stack)
	}
	if _, ok := b.transactional(ho); ok {
		// The transaction is the dedup: a record whose transaction
		// committed is never delivered again, and one whose transaction
		// aborted must be handled again, which a dedup store that recorded
		// its first handling would swallow, losing its outputs.
		stack.Disable |= middleware.StepDedup
	}
	if err := b.delayedTier(&stack, &ho, topic, group); err != nil {
		return fmt.Errorf("bus: handler %q: %w", name, err)
	}
	tel := b.tel.Handler(name, topic, group)
	tel.Observe(&stack)
	ctx, cancel := context.WithTimeout(context.Background(), prepareTimeout)
	defer cancel()
	if err := b.broker.Prepare(ctx, topic, group); err != nil {
		return fmt.Errorf("bus: prepare %s for %s: %w", topic, group, err)
	}
	sub, err := b.subscriber(group, ho)
	if err != nil {
		return fmt.Errorf("bus: subscriber for %s: %w", group, err)
	}
	fn := func(msg *message.Message) error { return h(msg.Context(), msg) }
	wh := b.router.AddConsumerHandler(name, topic, sub, fn)
	wh.AddMiddleware(tel.Middleware(), middleware.Stack(stack))
	wh.AddMiddleware(ho.extra...)
	if t, ok := b.transactional(ho); ok {
		wh.AddMiddleware(broker.DiscardFailedOutputs(t))
	}
	b.handlers[name] = topic
	b.subs = append(b.subs, sub)
	return nil
}

// delayedTier gives the stack's dead-letter step the broker's delayed
// tier for the handler's group, and the subscriber its delays; none for
// transactions and batches (retried whole), nor when the handler's stack
// options set one.
func (b *Bus) delayedTier(stack *middleware.StackConfig, ho *handlerOptions, topic, group string) error {
	delays := b.cfg.RedeliveryDelays
	if ho.delays != nil {
		delays = ho.delays
	}
	rb, ok := b.broker.(broker.Redelivering)
	if _, tx := b.transactional(*ho); !ok || tx || ho.sub.BatchSize > 1 || len(delays) == 0 || stack.DeadLetter.Redelivery.Redeliverer != nil {
		return nil
	}
	r, err := rb.Redeliverer(topic, group, delays)
	if err != nil {
		return fmt.Errorf("delayed redelivery for %s: %w", group, err)
	}
	stack.DeadLetter.Redelivery = middleware.RedeliveryConfig{Redeliverer: r, Delays: delays, MaxTotal: b.cfg.RedeliveryMaxTotal}
	ho.sub.RetryDelays = delays
	return nil
}

// subscriber makes the subscriber of a handler's group: with the handler's
// ordering, batch delivery and transactions where the broker offers them
// (broker.Configurable), behind the drain gate when the broker does not
// drain itself.
func (b *Bus) subscriber(group string, ho handlerOptions) (message.Subscriber, error) {
	var sub message.Subscriber
	var err error
	if c, ok := b.broker.(broker.Configurable); ok && !ho.sub.IsZero() {
		sub, err = c.SubscriberWith(group, ho.sub)
	} else {
		sub, err = b.broker.Subscriber(group)
	}
	if err != nil {
		return nil, err
	}
	if b.gate != nil {
		sub = b.gate.Subscriber(sub)
	}
	return sub, nil
}

// transactional returns b's broker as a broker.Transactional when a
// handler with ho runs in its transactions.
func (b *Bus) transactional(ho handlerOptions) (broker.Transactional, bool) {
	t, ok := b.broker.(broker.Transactional)
	return t, ok && ho.sub.Transactions
}

// Publish publishes msgs to topic. It returns when the broker accepted every
// message (Kafka acks=all, RabbitMQ publisher confirms; the in-process
// broker once queued, waiting while a queue is full). Messages get the
// CloudEvents id of their UUID when they carry none, and the correlation and
// causation ids of ctx (see [middleware.Propagate]): publish with a
// handler's ctx to link what it publishes to what it handles.
//
// After [Bus.Close] began, Publish returns [ErrClosed], except with the
// ctx of a handler of the bus that is still draining: what a handler
// publishes is part of its work, so it goes through until the drain is over
// and the publisher closes.
func (b *Bus) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	// Once Close began, only the handlers still draining may publish
	// (what they publish is part of their work), until the publisher
	// closes after the drain.
	if b.isClosed() && (message.HandlerNameFromCtx(ctx) == "" || b.pubClosed.Load()) {
		return ErrClosed
	}
	stamp(ctx, msgs)
	if err := b.pub.Publish(topic, msgs...); err != nil {
		return fmt.Errorf("bus: publish to %s: %w", topic, err)
	}
	return nil
}

// stamp gives msgs their ids and the correlation of ctx, and sets ctx as
// their context: what Publish does before the broker, and Stamp too.
func stamp(ctx context.Context, msgs []*message.Message) {
	middleware.Propagate(ctx, msgs...)
	for _, m := range msgs {
		m.SetContext(ctx)
	}
}

// Stamp gives msgs the envelope [Bus.Publish] would give them now, for
// code that stores messages and publishes them later (the outbox of
// bus/outbox): a UUID and CloudEvents id when they have none, the
// correlation and causation ids of ctx (see [middleware.Propagate]), and,
// when tracing is on and ctx carries a span, that span's context injected
// with the bus's propagator (traceparent, tracestate, baggage) as the
// messages' creation context. Values a message already carries are kept.
// Publishing a stamped message later changes none of it: its send span is
// then linked to the creation context.
func (b *Bus) Stamp(ctx context.Context, msgs ...*message.Message) {
	stamp(ctx, msgs)
	b.tel.Stamp(ctx, msgs)
}

// Publisher returns a Watermill publisher that publishes through the bus
// (see [Bus.Publish]); the message's context plays ctx's part. Closing it
// does nothing: the bus owns the broker's publisher.
func (b *Bus) Publisher() message.Publisher { return busPublisher{b} }

type busPublisher struct{ b *Bus }

func (p busPublisher) Publish(topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		if err := p.b.Publish(m.Context(), topic, m); err != nil {
			return err
		}
	}
	return nil
}

func (busPublisher) Close() error { return nil }

// Run runs the handlers until ctx is done or [Bus.Close] is called. When
// ctx ends, Run shuts the bus down gracefully within
// Config.ShutdownTimeout (see [Bus.Close]) and returns Close's error. Run
// returns ErrHandlersStopped when every handler stopped on its own.
func (b *Bus) Run(ctx context.Context) error {
	b.mu.Lock()
	switch b.state {
	case stateRunning:
		b.mu.Unlock()
		return ErrRunning
	case stateClosing:
		b.mu.Unlock()
		return ErrClosed
	}
	b.state = stateRunning
	// Started under the lock, so that a Close that sees the bus running
	// finds them started.
	werrc := b.workers.Start(ctx)
	b.mu.Unlock()
	stopPoller := b.tel.Start() // the broker poller, stopped by Close too
	defer stopPoller()

	// The router gets a context of its own: cancelling it cancels the
	// handlers at once, so only Close does, after the drain.
	errc := make(chan error, 1)
	go func() { errc <- b.router.Run(context.WithoutCancel(ctx)) }()
	select {
	case err := <-errc:
		if b.isClosed() {
			<-b.closed
			return b.closeErr
		}
		if err != nil {
			return fmt.Errorf("bus: router: %w", err)
		}
		return ErrHandlersStopped
	case <-ctx.Done():
		return b.shutdown(errc)
	case <-b.closed:
		<-errc
		return b.closeErr
	case werr := <-werrc:
		return errors.Join(fmt.Errorf("bus: %w", werr), b.shutdown(errc))
	}
}

// shutdown closes the bus within Config.ShutdownTimeout and waits for the
// router's end on errc: Run's end when its context ended or a worker failed.
func (b *Bus) shutdown(errc <-chan error) error {
	sctx, cancel := context.WithTimeout(context.Background(), b.cfg.ShutdownTimeout)
	defer cancel()
	err := b.Close(sctx)
	<-errc
	return err
}

// Running is closed once every handler is subscribed and the bus is running.
func (b *Bus) Running() <-chan struct{} { return b.router.Running() }

// Close shuts the bus down gracefully: it stops fetching messages, lets the
// handlers in flight finish (their messages are acked) until ctx is done,
// cancels those still running then (their messages are nacked, and the
// broker delivers them again later), and closes the router, the publisher
// and the broker connections. It returns an error when ctx ended the drain.
// Close is idempotent; later calls return the first call's result once it
// is done.
func (b *Bus) Close(ctx context.Context) error {
	b.closeOnce.Do(func() {
		b.mu.Lock()
		wasRunning := b.state == stateRunning
		b.state = stateClosing
		b.closing.Store(true)
		b.mu.Unlock()

		var errs []error
		if wasRunning {
			// Workers first: they stop taking new work while the
			// handlers drain, and may publish until they return.
			b.workers.Cancel()
			b.drain.StopFetching()
			close(b.stopping) // after: a message nacked now is held, not handed out again
			if err := b.drain.Drain(ctx); err != nil {
				errs = append(errs, fmt.Errorf("bus: shutdown interrupted handlers still running, their messages will be delivered again: %w", err))
			}
		}
		if wasRunning {
			// Cancels what is still running and closes the subscribers.
			if err := b.router.Close(); err != nil {
				errs = append(errs, fmt.Errorf("bus: close router: %w", err))
			}
		}
		// The router closes subscribers from goroutines it does not wait
		// for, and one that never ran closes none: close each here, and
		// wait, so nothing outlives Close.
		b.mu.Lock()
		subs := append(slices.Clip(b.subs), b.extraSubs...) // handlers' and DeadLetters'
		b.mu.Unlock()
		for _, s := range subs {
			if err := s.Close(); err != nil {
				errs = append(errs, fmt.Errorf("bus: close subscriber: %w", err))
			}
		}
		if wasRunning {
			if err := b.workers.Stop(ctx); err != nil {
				errs = append(errs, fmt.Errorf("bus: %w", err))
			}
		}
		b.tel.Close()
		b.pubClosed.Store(true)
		if err := b.pub.Close(); err != nil {
			errs = append(errs, fmt.Errorf("bus: close publisher: %w", err))
		}
		if err := b.broker.Close(); err != nil {
			errs = append(errs, fmt.Errorf("bus: close broker: %w", err))
		}
		b.closeErr = errors.Join(errs...)
		close(b.closed)
	})
	select {
	case <-b.closed:
		return b.closeErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *Bus) isClosed() bool { return b.closing.Load() }
