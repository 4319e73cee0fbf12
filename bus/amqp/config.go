package amqp

import (
	"errors"
	"fmt"
	"net/url"

	"github.com/busline/busline/internal/tlsconfig"
)

// Defaults applied to zero fields of [Config].
const (
	DefaultPrefetch        = 16
	DefaultChannelPoolSize = 4
	DefaultConcurrency     = 1
	DefaultPublishWindow   = 512
	DefaultQueueType       = QueueTypeClassic
)

// Queue types of [Config.QueueType].
const (
	// QueueTypeClassic is RabbitMQ's classic queue: one copy, on one node.
	QueueTypeClassic = "classic"
	// QueueTypeQuorum is RabbitMQ's quorum queue: replicated with Raft
	// across the cluster's nodes, always durable.
	QueueTypeQuorum = "quorum"
)

// TLSConfig holds TLS settings; the zero value means no TLS (unless the URL
// scheme is amqps).
type TLSConfig = tlsconfig.Config

// Config configures the RabbitMQ broker. Zero fields mean the documented
// defaults; only URL is required.
type Config struct {
	// URL is the AMQP 0-9-1 URL, e.g. amqp://guest:guest@127.0.0.1:5672/.
	// Required.
	URL string
	// Prefetch bounds the unacknowledged deliveries a subscription holds:
	// those in its handlers plus those buffered for them. It must not be
	// below Concurrency. Zero: the larger of 16 and Concurrency.
	Prefetch int
	// Concurrency is how many messages one subscription hands out at a
	// time before the first of them is acked or nacked: with the router,
	// how many handlers of one subscription run at once. Zero: 1, which
	// keeps queue order (the next message is handed out only after the
	// previous one was settled); above 1 messages of one subscription are
	// handled in parallel and may finish, and be redelivered, out of order.
	Concurrency int
	// ChannelPoolSize is the number of channels publishing shares; each
	// Publish call sends its messages on one of them, in order. Zero: 4.
	ChannelPoolSize int
	// PublishWindow bounds the published messages per channel that RabbitMQ
	// has not confirmed yet: Publish sends up to this many before it waits
	// for the first confirm. Zero: 512.
	PublishWindow int
	// AllowUnroutable publishes without the mandatory flag: a message no
	// queue is bound to is confirmed and dropped by RabbitMQ. Zero (false):
	// messages are published mandatory, and one RabbitMQ cannot route is
	// returned and reported by Publish as [ErrUnroutable].
	AllowUnroutable bool
	// QueueType is the type of every queue the broker declares: the
	// groups' queues ([QueueName]) and the wait queues of delayed
	// redelivery ([WaitQueueName]). "classic" or "quorum"; zero: "classic".
	//
	// Classic is the default because it is what queues declared by earlier
	// versions of Busline (and by watermill-amqp) are: RabbitMQ cannot
	// change the type of an existing queue, and declaring one with another
	// type fails with [ErrQueueMismatch], so a new default would stop every
	// existing deployment at start-up; and on a single node (as in
	// development and CI) a quorum queue replicates nothing and costs more
	// memory and disk per queue. Choose quorum on a cluster: its queues
	// survive the loss of a minority of nodes, and its wait queues
	// dead-letter at least once (x-dead-letter-strategy at-least-once,
	// with x-overflow reject-publish, RabbitMQ 3.10 or later with the
	// stream_queue feature flag), where a classic queue dead-letters at
	// most once: a classic wait queue drops a message whose wait ends
	// while its group's queue is full or gone.
	QueueType string
	// MaxQueueLength bounds the ready messages of every group's queue
	// (x-max-length, with x-overflow reject-publish): when the queue is
	// full, RabbitMQ refuses further messages routed to it and Publish fails
	// for exactly those with [ErrNacked]; nothing already accepted is
	// dropped. [Broker.RejectedPublishes] counts them. It applies to the
	// queue of the dead-letter topic too: a full one makes dead-lettering
	// fail, and the message is nacked and comes back. Zero: unbounded.
	// Like the type, RabbitMQ cannot change it on an existing queue
	// ([ErrQueueMismatch]).
	//
	// A classic queue holds at most MaxQueueLength. A quorum queue's bound
	// is soft: RabbitMQ (3.10.8) tells the publishing channel only once the
	// queue went over it, so it accepts what is in flight until then
	// (measured: one more when publishing one message at a time, all 50 of
	// one pipelined Publish call into a queue bounded at 5), then rejects.
	MaxQueueLength int
	// TLS configures TLS. Zero: plaintext, or the system defaults for amqps.
	// When TLS.Enabled is set and the URL scheme is amqp, the broker dials
	// amqps instead (default port 5671 unless the URL names one).
	TLS TLSConfig
}

// Validate reports every problem of c at once.
func (c Config) Validate() error {
	var errs []error
	if c.URL == "" {
		errs = append(errs, errors.New("amqp: no URL (set BUSLINE_AMQP_URL)"))
	} else if u, err := url.Parse(c.URL); err != nil {
		errs = append(errs, fmt.Errorf("amqp: URL: %w", err))
	} else if u.Scheme != "amqp" && u.Scheme != "amqps" {
		errs = append(errs, fmt.Errorf("amqp: URL scheme %q is neither amqp nor amqps", u.Scheme))
	}
	if c.Prefetch < 0 {
		errs = append(errs, fmt.Errorf("amqp: prefetch %d is negative", c.Prefetch))
	}
	if c.Concurrency < 0 {
		errs = append(errs, fmt.Errorf("amqp: concurrency %d is negative", c.Concurrency))
	}
	if c.Prefetch > 0 && c.Prefetch < c.Concurrency {
		errs = append(errs, fmt.Errorf("amqp: prefetch %d is below concurrency %d: handlers would wait for deliveries RabbitMQ may not send", c.Prefetch, c.Concurrency))
	}
	if c.ChannelPoolSize < 0 {
		errs = append(errs, fmt.Errorf("amqp: channel pool size %d is negative", c.ChannelPoolSize))
	}
	if c.PublishWindow < 0 {
		errs = append(errs, fmt.Errorf("amqp: publish window %d is negative", c.PublishWindow))
	}
	switch c.QueueType {
	case "", QueueTypeClassic, QueueTypeQuorum:
	default:
		errs = append(errs, fmt.Errorf("amqp: queue type %q is neither %s nor %s", c.QueueType, QueueTypeClassic, QueueTypeQuorum))
	}
	if c.MaxQueueLength < 0 {
		errs = append(errs, fmt.Errorf("amqp: max queue length %d is negative", c.MaxQueueLength))
	}
	if err := c.TLS.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("amqp: %w", err))
	}
	return errors.Join(errs...)
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Prefetch == 0 {
		c.Prefetch = max(DefaultPrefetch, c.Concurrency)
	}
	if c.ChannelPoolSize == 0 {
		c.ChannelPoolSize = DefaultChannelPoolSize
	}
	if c.PublishWindow == 0 {
		c.PublishWindow = DefaultPublishWindow
	}
	if c.QueueType == "" {
		c.QueueType = DefaultQueueType
	}
	return c
}
