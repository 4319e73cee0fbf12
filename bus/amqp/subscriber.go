package amqp

import (
	"context"
	"errors"
	"sync"
	"time"

	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
)

// subscriber wraps a watermill-amqp subscriber so that a nacked delivery is
// handed back to RabbitMQ only after the nack delay, instead of at once.
//
// Each subscription runs one forwarding goroutine, owned by the
// subscriber: Close ends it, and every wait in it selects on the close
// signal, so Close never waits for a nack delay (nor for a reader that
// stopped reading, the trap of Watermill's MessageTransformSubscriberDecorator).
type subscriber struct {
	up        *wamqp.Subscriber
	nackDelay time.Duration
	onClose   func(*subscriber)

	closing   chan struct{}
	closeOnce sync.Once
	closeErr  error

	// mu is held for reading while a subscription starts, and for writing
	// by Close to set closed: watermill-amqp must not start a subscription
	// while it closes.
	mu     sync.RWMutex
	closed bool
	wg     sync.WaitGroup
}

var (
	_ message.Subscriber           = (*subscriber)(nil)
	_ message.SubscribeInitializer = (*subscriber)(nil)
)

func newSubscriber(up *wamqp.Subscriber, nackDelay time.Duration, onClose func(*subscriber)) *subscriber {
	return &subscriber{
		up:        up,
		nackDelay: nackDelay,
		onClose:   onClose,
		closing:   make(chan struct{}),
	}
}

// Subscribe consumes the group's queue of topic. See the package
// documentation for the delivery semantics.
func (s *subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if err := checkTopic(topic); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	in, err := s.up.Subscribe(ctx, topic)
	if err != nil {
		return nil, errors.Join(errors.New("amqp: subscribe "+topic), err)
	}
	out := make(chan *message.Message)
	s.wg.Add(1)
	go s.forward(ctx, in, out)
	return out, nil
}

// SubscribeInitialize declares the topic's exchange, the group's queue and
// its binding without consuming.
func (s *subscriber) SubscribeInitialize(topic string) error {
	if err := checkTopic(topic); err != nil {
		return err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	if err := s.up.SubscribeInitialize(topic); err != nil {
		return errors.Join(errors.New("amqp: declare "+topic), err)
	}
	return nil
}

// Close stops every subscription: deliveries in flight (also those waiting
// out a nack delay) go back to the queue at once, and every channel
// returned by Subscribe is closed. Close is idempotent.
func (s *subscriber) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.closing)
		s.closeErr = s.up.Close()
		s.wg.Wait()
		if s.onClose != nil {
			s.onClose(s)
		}
	})
	return s.closeErr
}

// forward hands messages from in to out until the subscription ends, then
// closes out and gives back, unprocessed, whatever watermill-amqp still
// hands over before it notices the end.
func (s *subscriber) forward(ctx context.Context, in <-chan *message.Message, out chan<- *message.Message) {
	defer s.wg.Done()
	for {
		var up *message.Message
		var ok bool
		select {
		case up, ok = <-in:
		case <-s.closing:
		case <-ctx.Done():
		}
		if !ok {
			break
		}
		if !s.handle(ctx, up, out) {
			break
		}
	}
	close(out)
	for {
		select {
		case up, ok := <-in:
			if !ok {
				return
			}
			up.Nack()
		case <-s.closing:
			return
		}
	}
}

// handle passes one message on and settles the delivery the way the reader
// settled the copy. It reports whether the subscription goes on.
func (s *subscriber) handle(ctx context.Context, up *message.Message, out chan<- *message.Message) bool {
	if ctx.Err() != nil {
		up.Nack()
		return false
	}
	down := message.NewMessage(up.UUID, up.Payload)
	down.Metadata = up.Metadata
	down.SetContext(up.Context())

	select {
	case out <- down:
	case <-s.closing:
		up.Nack()
		return false
	case <-ctx.Done():
		up.Nack()
		return false
	}

	select {
	case <-down.Acked():
		up.Ack()
		return true
	case <-down.Nacked():
		s.delay(ctx)
		up.Nack()
		return true
	case <-s.closing:
		up.Nack()
		return false
	}
}

// delay waits the nack delay, or less when the subscription ends first.
func (s *subscriber) delay(ctx context.Context) {
	if s.nackDelay <= 0 {
		return
	}
	t := time.NewTimer(s.nackDelay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.closing:
	case <-ctx.Done():
	}
}
