package amqp

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sync"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Errors returned by the broker.
var (
	// ErrClosed is returned by operations on a closed Broker or subscriber.
	ErrClosed = errors.New("amqp: closed")
	// ErrQueueNotFound is returned by [Broker.QueueDepth] for a queue that
	// does not exist (nobody prepared or subscribed the group yet).
	ErrQueueNotFound = errors.New("amqp: queue not found")
)

// connectionName is shown for Busline's connections in RabbitMQ's
// management UI and rabbitmqctl list_connections.
const connectionName = "busline"

// Broker is the RabbitMQ adapter of the bus: one AMQP connection shared by
// one publisher (with a channel pool in confirm mode) and every subscriber.
// All methods are safe for concurrent use.
type Broker struct {
	cfg    Config
	logger watermill.LoggerAdapter
	conn   *wamqp.ConnectionWrapper
	pub    *wamqp.Publisher

	mu     sync.Mutex
	closed bool
	subs   []*subscriber

	ops sync.WaitGroup // channel operations started by Prepare, Ping, QueueDepth
}

// New connects to RabbitMQ and opens the publisher's channel pool. cfg is
// validated first; zero fields take their defaults. A nil logger logs
// nothing.
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
	props := amqp091.NewConnectionProperties()
	props.SetClientConnectionName(connectionName)

	b := &Broker{cfg: cfg, logger: logger}
	b.conn, err = wamqp.NewConnection(wamqp.ConnectionConfig{
		AmqpURI:    uri,
		AmqpConfig: &amqp091.Config{Properties: props, TLSClientConfig: tlsCfg},
	}, logger)
	if err != nil {
		return nil, fmt.Errorf("amqp: connect: %w", err)
	}
	b.pub, err = wamqp.NewPublisherWithConnection(b.config(""), logger, b.conn)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("amqp: publisher: %w", err), b.conn.Close())
	}
	return b, nil
}

// config is the watermill-amqp configuration of the group's subscriber, or
// of the publisher for group "". It is NewDurablePubSubConfig with the
// safe settings: confirms and a channel pool for publishing, a bounded
// prefetch and the tolerant marshaler.
func (b *Broker) config(group string) wamqp.Config {
	c := wamqp.NewDurablePubSubConfig(b.cfg.URL, func(topic string) string {
		return QueueName(topic, group)
	})
	c.Exchange.GenerateName = ExchangeName
	c.Marshaler = marshaler{}
	c.Publish.ConfirmDelivery = true
	c.Publish.ChannelPoolSize = b.cfg.ChannelPoolSize
	c.Consume.Qos.PrefetchCount = b.cfg.Prefetch
	return c
}

// Publisher returns the broker's one publisher. Publish declares the
// topic's exchange on first use and returns only after RabbitMQ confirmed
// every message (publisher confirms); a message published to a topic no
// queue is bound to is confirmed and dropped, so call [Broker.Prepare] for
// every consumer group first. Closing it closes it for every user.
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
		return nil, ErrClosed
	}
	up, err := wamqp.NewSubscriberWithConnection(b.config(group), b.logger, b.conn)
	if err != nil {
		return nil, fmt.Errorf("amqp: subscriber: %w", err)
	}
	s := newSubscriber(up, b.cfg.NackDelay, b.forget)
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
	cfg := b.config(group)
	err := b.withChannel(ctx, func(ch *amqp091.Channel) error {
		return cfg.TopologyBuilder.BuildTopology(ch, QueueName(topic, group), ExchangeName(topic), cfg, b.logger)
	})
	if err != nil {
		return fmt.Errorf("amqp: prepare %s for %s: %w", topic, group, err)
	}
	return nil
}

// Ping checks that the connection is up and RabbitMQ answers: it opens
// and closes a channel.
func (b *Broker) Ping(ctx context.Context) error {
	if err := b.withChannel(ctx, func(*amqp091.Channel) error { return nil }); err != nil {
		return fmt.Errorf("amqp: ping: %w", err)
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
	err := b.withChannel(ctx, func(ch *amqp091.Channel) error {
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

// withChannel runs fn on a short-lived channel of the shared connection.
// amqp091-go takes no context, so fn runs in a goroutine owned by the
// broker (Close waits for it; closing the connection ends it) and
// withChannel returns ctx's error as soon as ctx ends.
func (b *Broker) withChannel(ctx context.Context, fn func(*amqp091.Channel) error) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrClosed
	}
	if !b.conn.IsConnected() {
		b.mu.Unlock()
		return errors.New("not connected to RabbitMQ")
	}
	conn := b.conn.Connection()
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
// back to their queues), the publisher and the connection. It is
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
	if err := b.conn.Close(); err != nil {
		errs = append(errs, err)
	}
	b.ops.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("amqp: close: %w", err)
	}
	return nil
}
