// Package drain gives a graceful shutdown to the subscribers of a broker
// that cannot drain itself (one that is not a broker.Drainer): a [Gate]
// stops them fetching and counts the messages in flight until they are
// acked or nacked.
package drain

import (
	"context"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/internal/inflight"
)

// Gate is the shutdown state shared by the subscribers it wraps: a signal
// to stop fetching and a count of the messages in flight. It implements
// broker.Drainer. It is safe for concurrent use.
type Gate struct {
	stopOnce sync.Once
	stopping chan struct{}
	inflight inflight.Tracker
}

// NewGate returns an open gate.
func NewGate() *Gate { return &Gate{stopping: make(chan struct{})} }

// StopFetching makes every subscriber of the gate stop taking messages.
func (g *Gate) StopFetching() { g.stopOnce.Do(func() { close(g.stopping) }) }

// Drain waits until every message the gate's subscribers handed out was
// acked or nacked, or ctx is done.
func (g *Gate) Drain(ctx context.Context) error { return g.inflight.Wait(ctx) }

// Subscriber wraps s: it forwards s's messages until the gate stops
// fetching, and counts them in flight until they are acked or nacked.
func (g *Gate) Subscriber(s message.Subscriber) message.Subscriber {
	return &drainSubscriber{Subscriber: s, g: g, closing: make(chan struct{})}
}

// drainSubscriber forwards a broker subscription to the router until the
// gate stops fetching, and counts the messages in flight until they are
// acked or nacked. After the stop it keeps its channel open (a closed
// channel makes Watermill's router close itself, cancelling the handlers
// still draining) and takes nothing more from the broker, which keeps what
// it has not delivered for the next consumer.
type drainSubscriber struct {
	message.Subscriber
	g       *Gate
	closing chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
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
			if s.stopped() {
				// Taken as fetching stopped (select picks at random
				// among ready cases): back to the broker, not to the
				// handler.
				s.giveUp(ctx, m, in)
				return
			}
			s.g.inflight.Add()
			select {
			case out <- m:
			case <-s.g.stopping:
				s.g.inflight.Done()
				s.giveUp(ctx, m, in)
				return
			case <-ctx.Done():
				s.g.inflight.Done()
				s.giveUp(ctx, m, in)
				return
			case <-s.closing:
				s.g.inflight.Done()
				s.giveUp(ctx, m, in)
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer s.g.inflight.Done()
				select {
				case <-m.Acked():
				case <-m.Nacked():
				case <-s.closing:
				}
			}()
		case <-s.g.stopping:
			s.giveUp(ctx, nil, in)
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

// stopped reports whether the gate stopped fetching.
func (s *drainSubscriber) stopped() bool {
	select {
	case <-s.g.stopping:
		return true
	default:
		return false
	}
}

// giveUp nacks m (when not nil), taken from the broker but not handed to
// the router, and stops forwarding. Once fetching stopped it first waits
// until the subscription ends: what the broker hands over meanwhile stays
// with it (its prefetch), and goes back to its queue when the subscriber
// closes.
func (s *drainSubscriber) giveUp(ctx context.Context, m *message.Message, in <-chan *message.Message) {
	if m != nil {
		m.Nack()
	}
	if s.stopped() {
		select {
		case <-ctx.Done():
		case <-s.closing:
		}
	}
	s.discard(in)
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

// SubscribeInitialize passes through to the broker's subscriber, if it can.
func (s *drainSubscriber) SubscribeInitialize(topic string) error {
	if si, ok := s.Subscriber.(message.SubscribeInitializer); ok {
		return si.SubscribeInitialize(topic)
	}
	return nil
}
