package memory

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus/broker"
	"github.com/busline/busline/internal/inflight"
)

// Errors returned by the in-process broker.
var (
	// ErrQueueFull is returned by Publish when a queue stayed full for
	// Config.PublishTimeout: the consumers are too far behind.
	ErrQueueFull = errors.New("memory: queue full")
)

// The capabilities of the in-process broker.
var (
	_ broker.Broker       = (*Broker)(nil)
	_ broker.Drainer      = (*Broker)(nil)
	_ broker.Redelivering = (*Broker)(nil)
	_ broker.QueueDepther = (*Broker)(nil)
)

// Broker is Busline's in-process broker: a bounded, ordered Watermill
// Publisher and a source of Subscribers. It is safe for concurrent use.
//
// Each topic has one queue per consumer group, of Config.Buffer messages.
// Publish copies a message into the queue of every group of its topic and
// waits while a queue is full, so producers feel backpressure instead of
// memory growing. Messages published to a topic that has no group yet wait in
// a queue of the same size that the first group to subscribe takes over.
type Broker struct {
	cfg Config

	mu     sync.RWMutex
	topics map[string]*topic

	closing   chan struct{}
	closed    atomic.Bool
	stopping  chan struct{}
	stopOnce  sync.Once
	closeOnce sync.Once
	subs      sync.WaitGroup
	inflight  inflight.Tracker

	timersMu sync.Mutex
	timers   map[*time.Timer]struct{} // of delayed messages (redeliver.go)
}

type topic struct {
	// groups is replaced, never changed in place, so Publish reads it
	// without locking.
	groups  atomic.Pointer[[]*queue]
	byName  map[string]*queue // guarded by Broker.mu
	backlog *queue            // guarded by Broker.mu; nil once a group took it
}

type queue struct {
	ch chan *message.Message

	mu       sync.Mutex
	pending  []*message.Message // interrupted in flight; delivered first
	npending atomic.Int32       // len(pending), read without the lock
	delayed  atomic.Int32       // messages on a redelivery timer
}

// New returns an in-process broker.
func New(cfg Config) (*Broker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Buffer == 0 {
		cfg.Buffer = 1024
	}
	if cfg.PublishTimeout == 0 {
		cfg.PublishTimeout = 10 * time.Second
	}
	return &Broker{
		cfg:      cfg,
		topics:   make(map[string]*topic),
		closing:  make(chan struct{}),
		stopping: make(chan struct{}),
	}, nil
}

// Publisher returns b, which is the broker's publisher.
func (b *Broker) Publisher() message.Publisher { return b }

// Subscriber returns a subscriber in consumer group group: every message of a
// topic reaches one subscription of each group.
func (b *Broker) Subscriber(group string) (message.Subscriber, error) {
	if b.closed.Load() {
		return nil, broker.ErrClosed
	}
	return &Subscriber{b: b, group: group, closing: make(chan struct{})}, nil
}

// Prepare creates the queue of group on topic, so that messages published
// from now on wait for the group's subscriptions.
func (b *Broker) Prepare(_ context.Context, topic, group string) error {
	if b.closed.Load() {
		return broker.ErrClosed
	}
	b.queue(topic, group)
	return nil
}

// Ping reports broker.ErrClosed after Close, else nil.
func (b *Broker) Ping(context.Context) error {
	if b.closed.Load() {
		return broker.ErrClosed
	}
	return nil
}

// Publish puts a copy of each message into the queue of every consumer group
// of topic, in order. It waits while a queue is full, up to
// Config.PublishTimeout or until the message's context is done. When a
// message could not be queued it returns a *[broker.PublishError] listing
// it and every later one (an earlier group's queue may hold a copy of the
// first listed: publishing it again duplicates it there, which dedup
// absorbs).
func (b *Broker) Publish(topicName string, msgs ...*message.Message) error {
	t := b.topic(topicName)
	for i, m := range msgs {
		if err := b.publishOne(t, m); err != nil {
			failed := make([]broker.FailedMessage, 0, len(msgs)-i)
			for j := i; j < len(msgs); j++ {
				failed = append(failed, broker.FailedMessage{Index: j, UUID: msgs[j].UUID, Err: err})
			}
			return &broker.PublishError{Topic: topicName, Total: len(msgs), Failed: failed}
		}
	}
	return nil
}

// publishOne puts a copy of m into the queue of every group of t.
func (b *Broker) publishOne(t *topic, m *message.Message) error {
	if b.closed.Load() {
		return broker.ErrClosed
	}
	groups := *t.groups.Load()
	if len(groups) == 0 {
		b.mu.RLock()
		q := t.backlog
		b.mu.RUnlock()
		if q == nil { // a group took the backlog meanwhile
			groups = *t.groups.Load()
		} else if err := b.send(q, m); err != nil {
			return err
		}
	}
	for _, q := range groups {
		if err := b.send(q, m); err != nil {
			return err
		}
	}
	return nil
}

func (b *Broker) send(q *queue, m *message.Message) error {
	c := m.Copy()
	select {
	case q.ch <- c:
		return nil
	default:
	}
	ctx := m.Context()
	var timeout <-chan time.Time
	if b.cfg.PublishTimeout > 0 {
		t := time.NewTimer(b.cfg.PublishTimeout)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case q.ch <- c:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-timeout:
		return ErrQueueFull
	case <-b.closing:
		return broker.ErrClosed
	}
}

// StopFetching makes every subscription stop taking new messages; messages
// in flight are still delivered, acked and nacked. It is the first step of a
// graceful shutdown, before [Broker.Drain].
func (b *Broker) StopFetching() {
	b.stopOnce.Do(func() { close(b.stopping) })
}

// Drain waits until no message is in flight (delivered and neither acked nor
// nacked), or ctx is done.
func (b *Broker) Drain(ctx context.Context) error { return b.inflight.Wait(ctx) }

// Close stops every subscription, closing their channels. Messages still in
// queues are dropped: the in-process broker keeps nothing across a restart.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		b.closed.Store(true)
		close(b.closing)
		b.stopTimers()
	})
	b.subs.Wait()
	return nil
}

// Depth returns the number of messages waiting in the queue of group on
// topic, delayed redeliveries included, not counting the one in flight.
func (b *Broker) Depth(topic, group string) int {
	b.mu.RLock()
	defer b.mu.RUnlock()
	t := b.topics[topic]
	if t == nil {
		return 0
	}
	q := t.byName[group]
	if q == nil {
		return 0
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.ch) + len(q.pending) + int(q.delayed.Load())
}

// QueueDepth implements [broker.QueueDepther]: [Broker.Depth], which
// cannot fail.
func (b *Broker) QueueDepth(_ context.Context, topic, group string) (int, error) {
	return b.Depth(topic, group), nil
}

func (b *Broker) topic(name string) *topic {
	b.mu.RLock()
	t := b.topics[name]
	b.mu.RUnlock()
	if t != nil {
		return t
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.topicLocked(name)
}

func (b *Broker) topicLocked(name string) *topic {
	t := b.topics[name]
	if t == nil {
		t = &topic{byName: make(map[string]*queue), backlog: b.newQueue()}
		t.groups.Store(&[]*queue{})
		b.topics[name] = t
	}
	return t
}

func (b *Broker) newQueue() *queue {
	return &queue{ch: make(chan *message.Message, b.cfg.Buffer)}
}

// queue returns the queue of group on topic, creating it. The first group of
// a topic takes over the messages published before it existed.
func (b *Broker) queue(topicName, group string) *queue {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.topicLocked(topicName)
	if q := t.byName[group]; q != nil {
		return q
	}
	q := t.backlog
	t.backlog = nil
	if q == nil {
		q = b.newQueue()
	}
	t.byName[group] = q
	old := *t.groups.Load()
	groups := make([]*queue, len(old), len(old)+1)
	copy(groups, old)
	groups = append(groups, q)
	t.groups.Store(&groups)
	return q
}

func (q *queue) putBack(m *message.Message) {
	q.mu.Lock()
	q.pending = append(q.pending, m)
	q.npending.Store(int32(len(q.pending)))
	q.mu.Unlock()
}

func (q *queue) popPending() *message.Message {
	if q.npending.Load() == 0 {
		return nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pending) == 0 {
		return nil
	}
	m := q.pending[0]
	q.pending[0] = nil
	q.pending = q.pending[1:]
	q.npending.Store(int32(len(q.pending)))
	return m
}

// Subscriber subscribes to topics as one consumer group. It is safe for
// concurrent use.
type Subscriber struct {
	b       *Broker
	group   string
	closing chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
}

// SubscribeInitialize creates the group's queue on topic, so that messages
// published from now on are kept for it.
func (s *Subscriber) SubscribeInitialize(topic string) error {
	return s.b.Prepare(context.Background(), topic, s.group)
}

// Subscribe returns a channel of the group's messages on topic. The channel
// delivers the next message only after the previous one was acked; a nacked
// message is delivered again at once, before any later one,
// so a single subscription sees its group's messages in publish order. The
// channel closes when ctx is done or the subscriber or broker is closed; a
// message then in flight is kept for the group's next subscription.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if s.b.closed.Load() {
		return nil, broker.ErrClosed
	}
	select {
	case <-s.closing:
		return nil, broker.ErrClosed
	default:
	}
	q := s.b.queue(topic, s.group)
	out := make(chan *message.Message)
	// quit is closed when ctx is done or the subscriber or the broker
	// closes: the delivery loop waits on this one channel instead of three.
	quit := make(chan struct{})
	ended := make(chan struct{})
	s.b.subs.Add(2)
	s.wg.Add(2)
	go func() {
		defer s.b.subs.Done()
		defer s.wg.Done()
		select {
		case <-ctx.Done():
		case <-s.closing:
		case <-s.b.closing:
		case <-ended:
		}
		close(quit)
	}()
	go func() {
		defer s.b.subs.Done()
		defer s.wg.Done()
		defer close(out)
		defer close(ended)
		sub := subscription{s: s, q: q, out: out, quit: quit, ctx: ctx}
		sub.run()
	}()
	return out, nil
}

// Close closes every subscription of s and waits for them to end.
func (s *Subscriber) Close() error {
	s.once.Do(func() { close(s.closing) })
	s.wg.Wait()
	return nil
}

// subscription is one Subscribe call's delivery loop.
type subscription struct {
	s    *Subscriber
	q    *queue
	out  chan<- *message.Message
	quit <-chan struct{} // the subscription ends
	ctx  context.Context
}

func (u *subscription) run() {
	b := u.s.b
	for {
		select {
		case <-b.stopping:
			// Graceful shutdown: take nothing new, but keep the channel open
			// (a closed channel makes the router close itself, cancelling
			// the handlers still draining) until the end.
			<-u.quit
			return
		default:
		}
		m := u.q.popPending()
		if m == nil {
			select {
			case m = <-u.q.ch: // the usual case while consumers keep up
			default:
				select {
				case m = <-u.q.ch:
				case <-u.quit:
					return
				case <-b.stopping:
					continue
				}
			}
		}
		if !u.deliver(m) {
			return
		}
	}
}

// deliver hands m to the subscription and waits for its ack, delivering it
// again after a nack. It reports false when the subscription must end.
func (u *subscription) deliver(m *message.Message) bool {
	b := u.s.b
	for {
		mctx, cancel := context.WithCancel(u.ctx)
		m.SetContext(mctx)
		b.inflight.Add()
		select {
		case u.out <- m:
		default:
			select {
			case u.out <- m:
			case <-u.quit:
				return u.interrupted(m, cancel, false)
			}
		}
		select {
		case <-m.Acked():
			cancel()
			b.inflight.Done()
			return true
		case <-m.Nacked():
		case <-u.quit:
			return u.interrupted(m, cancel, true)
		}
		cancel()
		m = m.Copy() // a message is acked or nacked once; the next try needs a fresh one
		b.inflight.Done()
		if again, ok := u.redeliver(m); !again {
			return ok
		}
	}
}

// redeliver reports whether a nacked message m is delivered again at once
// (again true; the stack's nack-delay step waited before the nack). When a
// graceful shutdown began, or the subscription ended (ok false), m is kept
// for the group's next subscription instead.
func (u *subscription) redeliver(m *message.Message) (again, ok bool) {
	select {
	case <-u.quit:
		u.q.putBack(m)
		return false, false
	case <-u.s.b.stopping:
		u.q.putBack(m)
		return false, true
	default:
		return true, true
	}
}

func (u *subscription) interrupted(m *message.Message, cancel context.CancelFunc, delivered bool) bool {
	cancel()
	if delivered {
		m = m.Copy()
	}
	u.q.putBack(m)
	u.s.b.inflight.Done()
	return false
}
