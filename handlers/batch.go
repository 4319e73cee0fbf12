package handlers

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/internal/delivery"
	"github.com/busline/busline/middleware"
	"github.com/busline/busline/schema"
)

// Defaults of BatchConfig.
const (
	DefaultBatchSize    = 100
	DefaultBatchMaxWait = 100 * time.Millisecond
)

// BatchConfig configures [Batch].
type BatchConfig struct {
	// Size is the most events one call of the batch function gets. A batch
	// that reaches Size is handled at once. Zero: DefaultBatchSize.
	// Negative panics.
	Size int
	// MaxWait is how long the first message of a batch waits for more
	// before the batch is handled with what it has. Zero:
	// DefaultBatchMaxWait. Negative panics.
	MaxWait time.Duration
}

// Item is one event of a batch: the decoded value and its envelope. The
// envelope's ID is the natural idempotency key; to publish an event caused
// by this one, publish with schema.ContextWithEnvelope(ctx, item.Envelope).
type Item[T any] struct {
	Event    T
	Envelope schema.Envelope
}

// Batcher collects messages into batches of decoded events and hands each
// batch to one call of its function. Make one with [Batch]. It is safe for
// concurrent use; it starts no goroutines.
type Batcher[T any] struct {
	r       *schema.Registry
	fn      func(ctx context.Context, batch []Item[T]) error
	size    int
	maxWait time.Duration

	mu   sync.Mutex
	open *batch[T] // the batch that takes new messages, nil if none
}

// batch is one batch in the making. items and sealed are guarded by the
// Batcher's mu until sealed; after that items is read-only.
type batch[T any] struct {
	items  []*Item[T]
	sealed bool
	full   chan struct{} // closed when the batch reaches Size
	done   chan struct{} // closed when the batch was handled; err is set then
	err    error
}

// Batch returns a Batcher that decodes messages into T with r (upcasting
// old versions like [Event]) and calls fn with batches of at most cfg.Size
// events.
//
// # Delivery semantics
//
// Every message is acknowledged for itself, after its batch: [Batcher.Handle]
// and [Batcher.Process] report nil for a message only after fn returned nil
// for the batch that held it, and fn's error for every message of a failing
// batch. A message that cannot be decoded never joins a batch: its
// [*schema.Error] (permanent) is reported for it alone, so one poison message
// does not fail its neighbours. fn may therefore see an event again after a
// failure (at least once): make it idempotent, for instance keyed by
// Item.Envelope.ID.
//
// Batch panics when r or fn is nil, when T is not registered in r, or when
// cfg holds negative values.
func Batch[T any](r *schema.Registry, cfg BatchConfig, fn func(ctx context.Context, batch []Item[T]) error) *Batcher[T] {
	mustRegistered[T](r, "Batch")
	if fn == nil {
		panic("handlers: Batch: nil batch function")
	}
	if cfg.Size < 0 {
		panic(fmt.Sprintf("handlers: Batch: negative Size %d", cfg.Size))
	}
	if cfg.MaxWait < 0 {
		panic(fmt.Sprintf("handlers: Batch: negative MaxWait %v", cfg.MaxWait))
	}
	if cfg.Size == 0 {
		cfg.Size = DefaultBatchSize
	}
	if cfg.MaxWait == 0 {
		cfg.MaxWait = DefaultBatchMaxWait
	}
	return &Batcher[T]{r: r, fn: fn, size: cfg.Size, maxWait: cfg.MaxWait}
}

// Size is the most events one call of the batch function gets: the size to
// give the bus's batch delivery (bus.WithBatchDelivery).
func (b *Batcher[T]) Size() int { return b.size }

// Handle adds msg's event to its batch and returns once that batch was
// handled: nil when fn succeeded (ack msg), fn's error when it failed. It
// has the shape of a [bus.HandlerFunc] and is meant to be called by several
// goroutines at once, one per message in flight; it blocks its caller until
// the batch is done.
//
// # Which messages form a batch
//
// On Kafka with bus.WithBatchDelivery the broker delivers up to that many
// queued records of a partition as one carrier message: Handle decodes
// them and calls fn with their events, in order, at once (in calls of at
// most Size events), and the carrier's ack acks them all. When one does not
// decode, or fn fails or panics, the bus's retry step retries the whole
// batch within its budget; when that does not help, the carrier is nacked
// and the broker hands the records out again one by one, each marked to be
// handled alone: fn gets it as a batch of one at once, and its error is its
// own (retried, or dead-lettered: a poison message fails alone). fn may see
// the events of a failed batch again (at least once). The middleware runs
// once per carrier, so per-message dedup does not apply to a batch that
// succeeds: make fn idempotent, as said above.
//
// Other messages join the one open batch; one that cannot be decoded never
// joins it. A batch is handled when it holds Size events or MaxWait after
// its first message arrived, whichever comes first, by fn called on the
// first message's goroutine with that message's context. Later messages
// wait for the result. No goroutine or timer outlives a batch.
//
// When the context of a waiting message ends before its batch was handled,
// Handle takes its event out of the batch and returns the context's error
// (msg is nacked and comes back). When the first message's context ends
// before the batch was handled, fn is not called and every message of the
// batch gets an error that asks for redelivery (the bus nacks them; they are
// neither retried nor dead-lettered). A panic in fn fails every other message
// of the batch and is passed on to the first message's caller.
//
// Without batch delivery (the in-process broker, RabbitMQ, Kafka without
// bus.WithBatchDelivery), Handle gets a batch of several messages only when
// several are in flight at once: those brokers hand out one message per
// subscription (or partition) at a time, so there a Batcher gets batches of
// one message that waited MaxWait; use [Batcher.Process] with messages the
// caller fetched together there.
func (b *Batcher[T]) Handle(ctx context.Context, msg *message.Message) error {
	if mem := delivery.MemberFromContext(ctx); mem != nil {
		if msgs := mem.Batch.Carried(); msgs != nil {
			mem.Batch.Take()
			return b.handleCarried(ctx, msgs)
		}
		return b.handleAlone(ctx, msg)
	}
	ev, env, err := schema.DecodeAs[T](b.r, msg)
	if err != nil {
		return err
	}
	it := &Item[T]{Event: ev, Envelope: env}

	b.mu.Lock()
	cur := b.open
	leader := cur == nil
	if leader {
		cur = &batch[T]{
			items: make([]*Item[T], 0, min(b.size, 64)),
			full:  make(chan struct{}),
			done:  make(chan struct{}),
		}
		b.open = cur
	}
	cur.items = append(cur.items, it)
	if len(cur.items) == b.size {
		b.sealLocked(cur)
		close(cur.full)
	}
	b.mu.Unlock()

	if leader {
		return b.lead(ctx, cur)
	}
	select {
	case <-cur.done:
		return cur.err
	case <-ctx.Done():
	}
	b.mu.Lock()
	if !cur.sealed {
		cur.items = slices.DeleteFunc(cur.items, func(x *Item[T]) bool { return x == it })
		b.mu.Unlock()
		return ctx.Err()
	}
	b.mu.Unlock()
	// Sealed: the batch runs or ran with this event in it. Its outcome
	// decides; waiting for it is bounded by fn, which runs on a context
	// of its own that the router also cancels on shutdown.
	<-cur.done
	return cur.err
}

// handleCarried handles the messages one carrier message brought (batch
// delivery on Kafka): in calls of fn of at most Size events, in order, on
// the carrier's goroutine. When a message does not decode, or fn fails or
// panics, it returns a [splitError]: retried like a transient error, then
// the carrier is nacked, never dead-lettered, and the broker hands its
// messages out again one by one (see handleAlone).
func (b *Batcher[T]) handleCarried(ctx context.Context, msgs []*message.Message) (err error) {
	items := make([]Item[T], 0, len(msgs))
	for _, m := range msgs {
		ev, env, err := schema.DecodeAs[T](b.r, m)
		if err != nil {
			return middleware.Redeliver(splitError{err})
		}
		items = append(items, Item[T]{Event: ev, Envelope: env})
	}
	defer func() {
		if r := recover(); r != nil {
			err = middleware.Redeliver(splitError{fmt.Errorf("handlers: batch function panicked: %v", r)})
		}
	}()
	for len(items) > 0 {
		n := min(len(items), b.size)
		if err := b.fn(ctx, items[:n]); err != nil {
			return middleware.Redeliver(splitError{err})
		}
		items = items[n:]
	}
	return nil
}

// handleAlone handles a message split from a failed batch: at once, as a
// batch of one, with its own errors (a schema error is permanent and
// dead-lettered, any other is retried), like any message of the bus.
func (b *Batcher[T]) handleAlone(ctx context.Context, msg *message.Message) error {
	ev, env, err := schema.DecodeAs[T](b.r, msg)
	if err != nil {
		return err
	}
	return b.fn(ctx, []Item[T]{{Event: ev, Envelope: env}})
}

// splitError is what a batch that came in one carrier message gets when it
// fails: the bus's middleware retries it like a transient error, then
// nacks the carrier instead of dead-lettering it, and the broker delivers
// its messages again one by one.
//
// It is wrapped in middleware.Redeliver.
type splitError struct{ err error }

func (e splitError) Error() string {
	return "handlers: batch failed, its messages are handled one by one: " + e.err.Error()
}

func (e splitError) Unwrap() error { return e.err }

// lead waits until cur is full, MaxWait passed or ctx ended, then seals
// and handles it.
func (b *Batcher[T]) lead(ctx context.Context, cur *batch[T]) (err error) {
	timer := time.NewTimer(b.maxWait)
	select {
	case <-cur.full:
	case <-timer.C:
	case <-ctx.Done():
	}
	timer.Stop()
	b.mu.Lock()
	b.sealLocked(cur)
	b.mu.Unlock()

	if ctx.Err() != nil {
		cur.err = middleware.Redeliver(abandonedError{ctx.Err()})
		close(cur.done)
		return ctx.Err()
	}
	completed := false
	defer func() {
		if !completed {
			cur.err = fmt.Errorf("handlers: batch function panicked while handling a batch of %d events", len(cur.items))
			close(cur.done)
		}
	}()
	items := make([]Item[T], len(cur.items))
	for i, it := range cur.items {
		items[i] = *it
	}
	err = b.fn(ctx, items)
	completed = true
	cur.err = err
	close(cur.done)
	return err
}

// sealLocked closes cur to new messages. b.mu must be held.
func (b *Batcher[T]) sealLocked(cur *batch[T]) {
	cur.sealed = true
	if b.open == cur {
		b.open = nil
	}
}

// Process handles msgs, messages the caller fetched together, in batches
// of at most Size events in their order, one batch after the other, and
// returns one error per message: errs[i] is nil when msgs[i] was handled
// (ack it), its [*schema.Error] when it could not be decoded (permanent:
// dead-letter it), or the error of the batch that held it (nack or retry
// it). It stops at the first failing batch: the messages after it are not
// handled and get that error too, so the caller keeps their order. MaxWait
// plays no part: the caller decides what arrives together.
func (b *Batcher[T]) Process(ctx context.Context, msgs []*message.Message) []error {
	errs := make([]error, len(msgs))
	idx := make([]int, 0, min(len(msgs), b.size))
	items := make([]Item[T], 0, min(len(msgs), b.size))
	flush := func() error {
		if len(items) == 0 {
			return nil
		}
		err := b.fn(ctx, items)
		for _, i := range idx {
			errs[i] = err
		}
		idx, items = idx[:0], items[:0]
		return err
	}
	for i, msg := range msgs {
		ev, env, err := schema.DecodeAs[T](b.r, msg)
		if err != nil {
			errs[i] = err
			continue
		}
		idx = append(idx, i)
		items = append(items, Item[T]{Event: ev, Envelope: env})
		if len(items) == b.size {
			if err := flush(); err != nil {
				failRest(errs, msgs, i+1, err)
				return errs
			}
		}
	}
	if err := flush(); err != nil {
		return errs
	}
	return errs
}

// failRest sets err for every message from i on that has no error yet.
func failRest(errs []error, msgs []*message.Message, i int, err error) {
	for ; i < len(msgs); i++ {
		if errs[i] == nil {
			errs[i] = err
		}
	}
}

// abandonedError is what the other messages of a batch get when the batch's
// first message's context ended before the batch ran. It is wrapped in
// middleware.Redeliver: the bus's middleware nacks the message for a later
// delivery instead of dead-lettering it; nothing was attempted.
type abandonedError struct{ err error }

func (e abandonedError) Error() string {
	return "handlers: batch abandoned before it ran: " + e.err.Error()
}

func (e abandonedError) Unwrap() error { return e.err }
