package amqp

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sync"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/busline/busline/bus/broker"
)

// Client names of the broker's two connections, shown in RabbitMQ's
// management UI and rabbitmqctl list_connections.
const (
	publishConnectionName = "busline-publish"
	consumeConnectionName = "busline-consume"
)

// The capabilities of the RabbitMQ broker.
var (
	_ broker.Broker       = (*Broker)(nil)
	_ broker.QueueDepther = (*Broker)(nil)
	_ broker.Browser      = (*Broker)(nil)
	_ broker.Redelivering = (*Broker)(nil)
	_ broker.Rejecter     = (*Broker)(nil)
)

// Broker is the RabbitMQ adapter of the bus: one AMQP connection for its
// one publisher (a pool of channels with pipelined publisher confirms) and
// one for every subscriber, Prepare, Ping and QueueDepth. Publishing and
// consuming use separate connections, as RabbitMQ advises: when RabbitMQ
// throttles publishers (flow control, memory alarms) it blocks their
// connection, and acks sent on it would stall too.
// All methods are safe for concurrent use.
type Broker struct {
	cfg    Config
	logger watermill.LoggerAdapter
	pubc   *connection
	sub    *connection
	pub    *publisher

	mu     sync.Mutex
	closed bool
	subs   []*subscriber

	ops sync.WaitGroup // channel operations started by Prepare, Ping, QueueDepth
}

// New connects to RabbitMQ. cfg is validated first; zero fields take their
// defaults. A nil logger logs nothing.
func New(cfg Config, logger watermill.LoggerAdapter) (*Broker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = watermill.NopLogger{}
	}

	tlsCfg, err := cfg.TLS.Load()
	if err != nil {
		return nil, fmt.Errorf("amqp: %w", err)
	}
	uri := cfg.URL
	if tlsCfg != nil {
		u, err := url.Parse(uri)
		if err != nil {
			return nil, fmt.Errorf("amqp: URL: %w", err)
		}
		u.Scheme = "amqps"
		uri = u.String()
	}
	acfg := amqp091.Config{TLSClientConfig: tlsCfg}

	b := &Broker{cfg: cfg, logger: logger}
	b.pubc, err = dial(uri, acfg, publishConnectionName, logger)
	if err != nil {
		return nil, fmt.Errorf("amqp: connect: cannot connect to AMQP: %w", err)
	}
	b.sub, err = dial(uri, acfg, consumeConnectionName, logger)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("amqp: connect: cannot connect to AMQP: %w", err), b.pubc.Close())
	}
	b.pub = newPublisher(b.pubc, cfg, logger)
	return b, nil
}

// Publisher returns the broker's one publisher. Publish declares the
// topic's exchange on first use, sends the messages in order on one
// channel of the pool without waiting for each confirm (up to
// Config.PublishWindow unconfirmed per channel), and returns once RabbitMQ
// confirmed every one. When some were not confirmed it returns a
// *[broker.PublishError] that names each failed message and why: nacked
// ([ErrNacked]), unroutable ([ErrUnroutable]: no queue is bound to the
// topic; call [Broker.Prepare] for every consumer group first), or lost
// with the connection ([ErrChannelClosed], [ErrNotConnected]). While the
// connection is down Publish fails at once; the broker reconnects in the
// background. Closing the publisher closes it for every user.
func (b *Broker) Publisher() message.Publisher { return b.pub }

// Subscriber returns a new subscriber of the consumer group: its
// subscriptions, and those of every other subscriber of the same group,
// compete on one durable queue per topic ([QueueName]); each group gets
// every message. It also implements [message.SubscribeInitializer]
// (declare without consuming). Close it when done; [Broker.Close] closes
// those left.
func (b *Broker) Subscriber(group string) (message.Subscriber, error) {
	if group == "" {
		return nil, errors.New("amqp: empty consumer group")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, broker.ErrClosed
	}
	s := newSubscriber(b, group)
	b.subs = append(b.subs, s)
	return s, nil
}

// forget drops a closed subscriber from the ones Close closes.
func (b *Broker) forget(s *subscriber) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.subs = slices.DeleteFunc(b.subs, func(x *subscriber) bool { return x == s })
}

// Prepare declares the topic's durable fanout exchange, the group's durable
// queue and the binding between them, so that messages published from now
// on are kept for the group even before it subscribes. It is idempotent.
func (b *Broker) Prepare(ctx context.Context, topic, group string) error {
	if err := checkNames(topic, group); err != nil {
		return err
	}
	if err := b.prepare(ctx, topic, group); err != nil {
		return fmt.Errorf("amqp: prepare %s for %s: %w", topic, group, err)
	}
	return nil
}

func (b *Broker) prepare(ctx context.Context, topic, group string) error {
	return b.withChannel(ctx, b.sub, func(ch *amqp091.Channel) error {
		return b.cfg.declareTopology(ch, topic, group)
	})
}

// Ping checks that both connections are up and RabbitMQ answers: it opens
// and closes a channel on each.
func (b *Broker) Ping(ctx context.Context) error {
	for _, c := range []*connection{b.pubc, b.sub} {
		if err := b.withChannel(ctx, c, func(*amqp091.Channel) error { return nil }); err != nil {
			return fmt.Errorf("amqp: ping: %w", err)
		}
	}
	return nil
}

// QueueDepth returns the number of messages ready for delivery in the
// group's queue of topic; deliveries held unacknowledged by consumers are
// not counted. It returns an error wrapping [ErrQueueNotFound] when the
// queue does not exist.
func (b *Broker) QueueDepth(ctx context.Context, topic, group string) (int, error) {
	if err := checkNames(topic, group); err != nil {
		return 0, err
	}
	var n int
	err := b.withChannel(ctx, b.sub, func(ch *amqp091.Channel) error {
		q, err := ch.QueueDeclarePassive(QueueName(topic, group), true, false, false, false, nil)
		if err != nil {
			var aerr *amqp091.Error
			if errors.As(err, &aerr) && aerr.Code == amqp091.NotFound {
				return fmt.Errorf("%w: %s", ErrQueueNotFound, QueueName(topic, group))
			}
			return err
		}
		n = q.Messages
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("amqp: queue depth of %s for %s: %w", topic, group, err)
	}
	return n, nil
}

// RejectedPublishes returns how many messages RabbitMQ refused with a
// negative publisher confirm since [New], each of which Publish (or
// Redeliver) reported as [ErrNacked]: with Config.MaxQueueLength, the
// messages a full queue rejected. It never decreases.
func (b *Broker) RejectedPublishes() int64 { return b.pub.rejected.Load() }

// withChannel runs fn on a short-lived channel of connection c.
// amqp091-go takes no context, so fn runs in a goroutine owned by the
// broker (Close waits for it; closing the connection ends it) and
// withChannel returns ctx's error as soon as ctx ends.
func (b *Broker) withChannel(ctx context.Context, c *connection, fn func(*amqp091.Channel) error) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return broker.ErrClosed
	}
	conn, _, err := c.current()
	if err != nil {
		b.mu.Unlock()
		return err
	}
	b.ops.Add(1)
	b.mu.Unlock()

	done := make(chan error, 1)
	go func() {
		defer b.ops.Done()
		ch, err := conn.Channel()
		if err != nil {
			done <- err
			return
		}
		err = fn(ch)
		if cerr := ch.Close(); cerr != nil && err == nil && !errors.Is(cerr, amqp091.ErrClosed) {
			err = cerr
		}
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close closes the subscribers still open (their in-flight deliveries go
// back to their queues), the publisher and the connections. It is
// idempotent.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	subs := slices.Clone(b.subs)
	b.mu.Unlock()

	var errs []error
	for _, s := range subs {
		if err := s.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := b.pub.Close(); err != nil {
		errs = append(errs, err)
	}
	for _, c := range []*connection{b.pubc, b.sub} {
		if err := c.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	b.ops.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("amqp: close: %w", err)
	}
	return nil
}
