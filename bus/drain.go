package bus

import (
	"context"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"
)

// drainer is a broker that can stop fetching and wait for the messages in
// flight itself (the in-process broker); other brokers' subscribers are
// wrapped in a drainSubscriber.
type drainer interface {
	StopFetching()
	Drain(ctx context.Context) error
}

// gate is the bus-wide shutdown state shared by drainSubscribers: a signal to
// stop fetching and a count of the messages in flight.
type gate struct {
	stopOnce sync.Once
	stopping chan struct{}
	inflight tracker
}

func newGate() *gate { return &gate{stopping: make(chan struct{})} }

func (g *gate) StopFetching() { g.stopOnce.Do(func() { close(g.stopping) }) }

func (g *gate) Drain(ctx context.Context) error { return g.inflight.wait(ctx) }

// drainSubscriber forwards a broker subscription to the router until the
// gate stops fetching, and counts the messages in flight until they are
// acked or nacked. After the stop it keeps its channel open (a closed
// channel makes Watermill's router close itself, cancelling the handlers
// still draining) and takes nothing more from the broker, which keeps what
// it has not delivered for the next consumer.
type drainSubscriber struct {
	message.Subscriber
	g       *gate
	closing chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
}

func newDrainSubscriber(s message.Subscriber, g *gate) *drainSubscriber {
	return &drainSubscriber{Subscriber: s, g: g, closing: make(chan struct{})}
}

func (s *drainSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	in, err := s.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		return nil, err
	}
	out := make(chan *message.Message)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(out)
		s.forward(ctx, in, out)
	}()
	return out, nil
}

func (s *drainSubscriber) forward(ctx context.Context, in <-chan *message.Message, out chan<- *message.Message) {
	for {
		select {
		case m, ok := <-in:
			if !ok {
				return
			}
			s.g.inflight.add()
			select {
			case out <- m:
			case <-ctx.Done():
				m.Nack()
				s.g.inflight.done()
				s.discard(in)
				return
			case <-s.closing:
				m.Nack()
				s.g.inflight.done()
				s.discard(in)
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer s.g.inflight.done()
				select {
				case <-m.Acked():
				case <-m.Nacked():
				case <-s.closing:
				}
			}()
		case <-s.g.stopping:
			select {
			case <-ctx.Done():
			case <-s.closing:
			}
			s.discard(in)
			return
		case <-ctx.Done():
			s.discard(in)
			return
		case <-s.closing:
			s.discard(in)
			return
		}
	}
}

// discard nacks whatever the broker still hands over until it closes the
// channel, so its Close never waits on us.
func (s *drainSubscriber) discard(in <-chan *message.Message) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for m := range in {
			m.Nack()
		}
	}()
}

// Close closes the broker's subscriber once and waits for the forwarding
// goroutines; later calls wait too and return nil.
func (s *drainSubscriber) Close() error {
	var err error
	s.once.Do(func() {
		close(s.closing)
		err = s.Subscriber.Close()
	})
	s.wg.Wait()
	return err
}

// tracker counts messages in flight and lets callers wait for zero.
type tracker struct {
	mu      sync.Mutex
	n       int
	waiters []chan struct{}
}

func (t *tracker) add() {
	t.mu.Lock()
	t.n++
	t.mu.Unlock()
}

func (t *tracker) done() {
	t.mu.Lock()
	t.n--
	if t.n == 0 {
		for _, w := range t.waiters {
			close(w)
		}
		t.waiters = nil
	}
	t.mu.Unlock()
}

func (t *tracker) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n
}

func (t *tracker) wait(ctx context.Context) error {
	t.mu.Lock()
	if t.n == 0 {
		t.mu.Unlock()
		return nil
	}
	w := make(chan struct{})
	t.waiters = append(t.waiters, w)
	t.mu.Unlock()
	select {
	case <-w:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// SubscribeInitialize passes through to the broker's subscriber, if it can.
func (s *drainSubscriber) SubscribeInitialize(topic string) error {
	if si, ok := s.Subscriber.(message.SubscribeInitializer); ok {
		return si.SubscribeInitialize(topic)
	}
	return nil
}
