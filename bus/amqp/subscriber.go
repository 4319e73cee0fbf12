package amqp

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/busline/busline/bus/broker"
)

// subscriber consumes the queues of one consumer group. Each subscription
// has its own channel (prefetch Config.Prefetch) and one goroutine that
// hands deliveries out while fewer than Config.Concurrency handed-out
// messages are unsettled; each handed-out message gets a goroutine that
// waits for its ack or nack and settles the delivery. Close ends them
// all, and every wait in them selects on the close signal, so Close never
// waits for a reader that stopped reading (the trap of Watermill's
// MessageTransformSubscriberDecorator).
type subscriber struct {
	b           *Broker
	group       string
	concurrency int
	prefetch    int
	logger      watermill.LoggerAdapter

	closing   chan struct{}
	closeOnce sync.Once

	// mu is held for reading while a subscription starts, and for writing
	// by Close to set closed: no subscription starts once Close waits.
	mu     sync.RWMutex
	closed bool
	wg     sync.WaitGroup
}

var (
	_ message.Subscriber           = (*subscriber)(nil)
	_ message.SubscribeInitializer = (*subscriber)(nil)
)

func newSubscriber(b *Broker, group string) *subscriber {
	return &subscriber{
		b:           b,
		group:       group,
		concurrency: b.cfg.Concurrency,
		prefetch:    b.cfg.Prefetch,
		logger:      b.logger,
		closing:     make(chan struct{}),
	}
}

// Subscribe declares the group's queue of topic (and the exchange and
// binding) and consumes it. See the package documentation for the
// delivery semantics.
func (s *subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if err := checkTopic(topic); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, broker.ErrClosed
	}
	if err := s.b.prepare(ctx, topic, s.group); err != nil {
		return nil, fmt.Errorf("amqp: subscribe %s: %w", topic, err)
	}
	out := make(chan *message.Message)
	s.wg.Add(1)
	go s.run(ctx, topic, out)
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
		return broker.ErrClosed
	}
	if err := s.b.prepare(context.Background(), topic, s.group); err != nil {
		return fmt.Errorf("amqp: declare %s: %w", topic, err)
	}
	return nil
}

// Close stops every subscription: deliveries in flight go back to the
// queue at once, and every channel
// returned by Subscribe is closed. Close is idempotent.
func (s *subscriber) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.closing)
		s.wg.Wait()
		s.b.forget(s)
	})
	return nil
}

// subscription is the state of one Subscribe call.
type subscription struct {
	s     *subscriber
	ctx   context.Context
	queue string
	out   chan *message.Message
	sem   chan struct{}  // one token per handed-out, unsettled message
	wg    sync.WaitGroup // settle goroutines
	acker *acker         // of the current channel
}

// run consumes until ctx ends or the subscriber closes, opening a new
// channel (on the connection re-established, if it dropped) whenever the
// current one dies.
func (s *subscriber) run(ctx context.Context, topic string, out chan *message.Message) {
	defer s.wg.Done()
	sub := &subscription{
		s:     s,
		ctx:   ctx,
		queue: QueueName(topic, s.group),
		out:   out,
		sem:   make(chan struct{}, s.concurrency),
	}
	fields := watermill.LogFields{"topic": topic, "amqp_queue_name": sub.queue}
	retry := reconnectMin
	var ch *amqp091.Channel
	for first := true; ; first = false {
		if !first {
			// The channel died. Wait for the connection, then declare
			// again: the queue may be gone with a restarted server.
			if _, err := s.b.sub.wait(ctx, s.closing); err != nil {
				break
			}
			if err := s.b.prepare(ctx, topic, s.group); err != nil {
				s.logger.Error("AMQP subscription: declare again failed, retrying", err, fields)
				if !sub.pause(retry) {
					break
				}
				retry = min(retry*2, reconnectMax)
				continue
			}
		}
		var deliveries <-chan amqp091.Delivery
		var err error
		ch, deliveries, err = sub.consume()
		if err == nil {
			sub.acker = newAcker(ch, s.prefetch)
		}
		if err != nil {
			s.logger.Error("AMQP subscription: consume failed, retrying", err, fields)
			if !sub.pause(retry) {
				break
			}
			retry = min(retry*2, reconnectMax)
			continue
		}
		retry = reconnectMin
		flushed := make(chan struct{})
		stopFlush := make(chan struct{})
		go func(a *acker) {
			defer close(flushed)
			sub.flushLoop(a, stopFlush)
		}(sub.acker)
		stop := sub.loop(deliveries)
		close(stopFlush)
		<-flushed
		// Send the acks held back (see acker) now: on a live channel whose
		// consumer was cancelled, closing it would requeue their messages;
		// at shutdown they need not wait for the drain.
		if err := sub.acker.flush(); err != nil && !errors.Is(err, amqp091.ErrClosed) {
			s.logger.Error("AMQP subscription: ack", err, fields)
		}
		if stop {
			break
		}
		_ = ch.Close() // the consumer may have been cancelled on a live channel
		ch = nil
		s.logger.Info("AMQP subscription: channel closed, consuming again", fields)
	}
	// Nothing more is handed out. The messages in the readers' hands may
	// still be acked; then closing the channel returns what it prefetched.
	close(out)
	sub.wg.Wait()
	if ch != nil {
		if err := sub.acker.flush(); err != nil && !errors.Is(err, amqp091.ErrClosed) {
			s.logger.Error("AMQP subscription: ack", err, fields)
		}
		_ = ch.Close()
	}
}

// flushLoop sends the acks of a when they are due (see [acker]): at once
// when maxHeld of them wait, else ackHoldBack after the first of them
// arrived, until stop.
func (sub *subscription) flushLoop(a *acker, stop <-chan struct{}) {
	timer := time.NewTimer(ackHoldBack)
	timer.Stop()
	armed := false
	for {
		all := false
		select {
		case <-a.kick:
		case <-timer.C:
			armed, all = false, true
		case <-stop:
			timer.Stop()
			return
		}
		held, err := a.flushRun(all)
		if err != nil && !errors.Is(err, amqp091.ErrClosed) {
			sub.s.logger.Error("AMQP subscription: ack", err, nil)
		}
		if held && !armed {
			timer.Reset(ackHoldBack)
			armed = true
		}
	}
}

// pause waits d, or less when the subscription ends first; it reports
// whether the subscription goes on.
func (sub *subscription) pause(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-sub.ctx.Done():
	case <-sub.s.closing:
	}
	return false
}

// consume opens a channel with the prefetch and starts consuming the queue.
func (sub *subscription) consume() (*amqp091.Channel, <-chan amqp091.Delivery, error) {
	conn, _, err := sub.s.b.sub.current()
	if err != nil {
		return nil, nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		return nil, nil, err
	}
	if err := ch.Qos(sub.s.prefetch, 0, false); err != nil {
		_ = ch.Close()
		return nil, nil, err
	}
	deliveries, err := ch.Consume(sub.queue, "", false, false, false, false, nil)
	if err != nil {
		_ = ch.Close()
		return nil, nil, err
	}
	return ch, deliveries, nil
}

// loop hands deliveries out, at most concurrency unsettled at a time,
// until the subscription ends (it returns true) or the channel dies
// (false).
func (sub *subscription) loop(deliveries <-chan amqp091.Delivery) (stop bool) {
	s := sub.s
	for {
		select {
		case sub.sem <- struct{}{}:
		case <-sub.ctx.Done():
			return true
		case <-s.closing:
			return true
		}
		var d amqp091.Delivery
		var ok bool
		select {
		case d, ok = <-deliveries:
		case <-sub.ctx.Done():
		case <-s.closing:
		}
		if !ok {
			<-sub.sem
			return sub.ctx.Err() != nil || sub.isClosing()
		}
		msg, _ := marshaler{}.Unmarshal(d) // never fails
		// The message's context ends once it is settled.
		ctx, cancel := context.WithCancel(sub.ctx)
		msg.SetContext(ctx)
		select {
		case sub.out <- msg:
		case <-sub.ctx.Done():
			cancel()
			_ = sub.acker.nack(d.DeliveryTag)
			<-sub.sem
			return true
		case <-s.closing:
			cancel()
			_ = sub.acker.nack(d.DeliveryTag)
			<-sub.sem
			return true
		}
		sub.wg.Add(1)
		go sub.settle(sub.acker, d, msg, cancel)
	}
}

func (sub *subscription) isClosing() bool {
	select {
	case <-sub.s.closing:
		return true
	default:
		return false
	}
}

// settle acks or nacks d the way the reader settled msg, then frees its
// place. A nack requeues d at once (the stack waited before it nacked).
// When the subscriber closes first, d goes back to the queue at once.
func (sub *subscription) settle(a *acker, d amqp091.Delivery, msg *message.Message, cancel context.CancelFunc) {
	defer sub.wg.Done()
	defer func() { <-sub.sem }()
	defer cancel()
	var err error
	select {
	case <-msg.Acked():
		a.ack(d.DeliveryTag)
	case <-msg.Nacked():
		err = a.nack(d.DeliveryTag)
	case <-sub.s.closing:
		// select picks at random among ready cases: an ack that raced the
		// close still counts, or the message would come back as a duplicate.
		select {
		case <-msg.Acked():
			a.ack(d.DeliveryTag)
		default:
			err = a.nack(d.DeliveryTag)
		}
	}
	if err != nil && !errors.Is(err, amqp091.ErrClosed) {
		sub.s.logger.Error("AMQP subscription: settle delivery", err, watermill.LogFields{"message_uuid": msg.UUID})
	}
}
