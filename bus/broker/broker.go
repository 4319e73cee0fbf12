package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Broker is what every broker provides. Every method is safe for concurrent
// use.
type Broker interface {
	// Publisher returns the broker's one shared publisher. Publish returns
	// only after the broker has accepted every message (Kafka acks=all,
	// RabbitMQ publisher confirms), and fails with a *[PublishError] naming
	// the messages it could not store.
	Publisher() message.Publisher
	// Subscriber returns a new subscriber whose subscriptions share the
	// consumer group: each message of a topic reaches one subscription of
	// every group.
	Subscriber(group string) (message.Subscriber, error)
	// Prepare makes sure the topic exists and messages published to it from
	// now on are kept for the group, even before anyone subscribes (Kafka:
	// topic created; RabbitMQ: exchange, queue and binding declared).
	Prepare(ctx context.Context, topic, group string) error
	// Ping checks the connection to the broker.
	Ping(ctx context.Context) error
	// Close releases the broker's connections. The bus closes its
	// publishers and subscribers first. Later calls of the other methods
	// return [ErrClosed].
	Close() error
}

// Ordering modes of [SubscriberOptions].Ordering.
const (
	// OrderPartition runs one message of a partition at a time, in order;
	// partitions run in parallel.
	OrderPartition = "partition"
	// OrderKey runs messages of different keys (ce_partitionkey) of one
	// partition concurrently, each key in order.
	OrderKey = "key"
	// OrderUnordered runs any message at any time, up to the in-flight
	// bound.
	OrderUnordered = "unordered"
)

// SubscriberOptions are what one handler asks of its subscriber. The zero
// value asks for nothing: the broker's configured defaults.
type SubscriberOptions struct {
	// Ordering is [OrderPartition], [OrderKey] or [OrderUnordered].
	// Zero: the broker's configured ordering.
	Ordering string
	// BatchSize, when above 1, hands out up to BatchSize messages of a
	// partition as one carrier message (internal/delivery) for a batch
	// handler. Batches need partition ordering. Zero or 1: one message at a
	// time.
	BatchSize int
	// Transactions runs the handler consume-transform-produce in the
	// broker's transactions (see [Transactional]). It needs partition
	// ordering and no batches.
	Transactions bool
	// RetryDelays are the delays of the handler's delayed redelivery tier
	// ([Redelivering]) when the broker keeps it where the subscriber must
	// also read (Kafka's retry topics). Nil: no tier.
	RetryDelays []time.Duration
}

// IsZero reports whether o asks for nothing.
func (o SubscriberOptions) IsZero() bool {
	return o.Ordering == "" && o.BatchSize == 0 && !o.Transactions && len(o.RetryDelays) == 0
}

// Validate reports every problem of o at once, joined with errors.Join.
// Its messages name no package: the caller wraps them (a bus handler's
// name, a broker's config).
func (o SubscriberOptions) Validate() error {
	var errs []error
	switch o.Ordering {
	case "", OrderPartition, OrderKey, OrderUnordered:
	default:
		errs = append(errs, fmt.Errorf("ordering %q is not partition, key or unordered", o.Ordering))
	}
	if o.BatchSize < 0 {
		errs = append(errs, errors.New("batch delivery size must be at least 1"))
	}
	partition := o.Ordering == "" || o.Ordering == OrderPartition
	if o.BatchSize > 1 && !partition {
		errs = append(errs, fmt.Errorf("batch delivery needs partition ordering, not %q", o.Ordering))
	}
	if o.Transactions && !partition {
		errs = append(errs, fmt.Errorf("transactions need partition ordering, not %q", o.Ordering))
	}
	if o.Transactions && o.BatchSize != 0 {
		errs = append(errs, errors.New("transactions do not go with batch delivery"))
	}
	if o.Transactions && len(o.RetryDelays) > 0 {
		errs = append(errs, errors.New("transactions do not go with retry delays"))
	}
	return errors.Join(errs...)
}

// Configurable is a broker whose subscribers take a handler's
// [SubscriberOptions] (Kafka). SubscriberWith(group, SubscriberOptions{})
// is Subscriber(group).
type Configurable interface {
	SubscriberWith(group string, opts SubscriberOptions) (message.Subscriber, error)
}

// Transactional is a [Configurable] broker whose subscribers honour
// [SubscriberOptions].Transactions: what a handler publishes with its
// message's context is produced in the message's transaction.
type Transactional interface {
	// DiscardOutputs drops what was published with ctx, the context of a
	// message a transactional subscription delivered, since it was handed
	// out or since the last call: the outputs of a failed attempt, which
	// must not reach the transaction. Elsewhere it does nothing.
	DiscardOutputs(ctx context.Context)
}

// DiscardFailedOutputs is the innermost middleware of a handler that runs
// in t's transactions: when an attempt fails (an error or a panic), what it
// published into its message's transaction is dropped
// ([Transactional.DiscardOutputs]), so that a retried attempt, or the dead
// letter, does not publish next to it. A Kafka transaction has no
// savepoint: the outputs are held back per message until its ack instead.
// The bus adds it to every transactional handler; a router of one's own
// must do the same.
func DiscardFailedOutputs(t Transactional) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) (out []*message.Message, err error) {
			ok := false
			defer func() {
				if !ok || err != nil {
					t.DiscardOutputs(msg.Context())
				}
			}()
			out, err = h(msg)
			ok = true
			return out, err
		}
	}
}

// Redeliverer sends a message back, after a delay, to the subscription of
// one group: middleware.Redeliverer, which a [Redelivering] broker returns.
// It is an alias of the literal interface type so that a broker package
// can implement [Redelivering] without importing this one.
type Redeliverer = interface {
	Redeliver(ctx context.Context, msg *message.Message, delay time.Duration) error
}

// Redelivering is a broker with a durable delayed redelivery tier: it
// sends a message back to one group's subscription on topic after one of
// delays (RabbitMQ: a TTL wait queue per delay that dead-letters into the
// group's queue; Kafka: a retry topic per delay that the group's subscriber
// also reads, handing a record out when it is due; in-process: a timer).
// Redeliverer declares what it needs, idempotently.
type Redelivering interface {
	Redeliverer(topic, group string, delays []time.Duration) (Redeliverer, error)
}

// ValidateDelays reports every problem of delays as the delays of a
// delayed redelivery tier, joined: each must be a positive whole number of
// milliseconds (the unit of RabbitMQ's TTLs and Kafka's timestamps), and
// none may be given twice. Its messages name no package: the caller wraps
// them.
func ValidateDelays(delays []time.Duration) error {
	var errs []error
	for i, d := range delays {
		switch {
		case d <= 0 || d%time.Millisecond != 0:
			errs = append(errs, fmt.Errorf("redelivery delay %v is not a positive whole number of milliseconds", d))
		case slices.Contains(delays[:i], d):
			errs = append(errs, fmt.Errorf("redelivery delay %v is given twice", d))
		}
	}
	return errors.Join(errs...)
}

// Drainer is a broker that stops fetching and waits for the messages in
// flight itself, for a graceful shutdown. The bus wraps the subscribers of
// other brokers to do it.
type Drainer interface {
	// StopFetching makes every subscription stop taking messages from the
	// broker; what it handed out may finish.
	StopFetching()
	// Drain waits until every message handed out was acked or nacked, or
	// ctx is done (returning its error).
	Drain(ctx context.Context) error
}

// QueueDepther is a broker that keeps a queue per topic and group and
// reports its depth: the messages waiting for the group.
type QueueDepther interface {
	QueueDepth(ctx context.Context, topic, group string) (int, error)
}

// Lagger is a broker that reports a group's consumer lag: by topic and
// partition, how many messages the group has not committed yet.
type Lagger interface {
	Lag(ctx context.Context, group string) (map[string]map[int32]int64, error)
}

// Browser is a broker that reads the messages waiting for a group on a
// topic without consuming them, oldest first (the dead-letter tool's list
// and show). The messages are mapped as the broker's subscribers map them:
// the same UUIDs and metadata.
type Browser interface {
	Browse(ctx context.Context, topic, group string) ([]*message.Message, error)
}

// ErrClosed is returned by the methods of a closed broker, publisher or
// subscriber, and by a closed bus (bus.ErrClosed is this error; its text
// is the one the bus always had).
var ErrClosed = errors.New("bus: closed")

// PublishError reports the messages of one Publish call that the broker did
// not store. Every message of the call that it does not list was accepted
// (Kafka: acknowledged by all in-sync replicas; RabbitMQ: confirmed), so
// publishing again exactly the listed messages completes the call (a retry
// may still duplicate a listed message whose acknowledgement, not whose
// write, was lost).
//
// Find it with errors.As; errors.Is looks into each failed message's error
// (for example [ErrClosed], or a broker's own error such as
// amqp.ErrUnroutable or kerr.MessageTooLarge).
type PublishError struct {
	// Topic is the topic of the Publish call.
	Topic string
	// Total is the number of messages of the Publish call.
	Total int
	// Failed lists the messages that were not stored, in the order of the
	// Publish call. It is never empty.
	Failed []FailedMessage
}

// FailedMessage is one message of a Publish call that was not stored.
type FailedMessage struct {
	// Index is the message's position in the Publish call's arguments.
	Index int
	// UUID is the message's UUID.
	UUID string
	// Err is why it was not stored.
	Err error
}

// UUIDs returns the UUIDs of the failed messages, in the order of the
// Publish call.
func (e *PublishError) UUIDs() []string {
	ids := make([]string, len(e.Failed))
	for i, f := range e.Failed {
		ids[i] = f.UUID
	}
	return ids
}

// Error lists the failed messages, at most five of them with their errors.
func (e *PublishError) Error() string {
	var sb strings.Builder
	sb.WriteString("broker: publish to ")
	sb.WriteString(e.Topic)
	sb.WriteString(": ")
	sb.WriteString(strconv.Itoa(len(e.Failed)))
	sb.WriteString(" of ")
	sb.WriteString(strconv.Itoa(e.Total))
	sb.WriteString(" messages failed")
	const show = 5
	for i, f := range e.Failed {
		if i == show {
			sb.WriteString("; and ")
			sb.WriteString(strconv.Itoa(len(e.Failed) - show))
			sb.WriteString(" more")
			break
		}
		if i == 0 {
			sb.WriteString(": ")
		} else {
			sb.WriteString("; ")
		}
		sb.WriteString(f.UUID)
		sb.WriteString(": ")
		if f.Err != nil {
			sb.WriteString(f.Err.Error())
		}
	}
	return sb.String()
}

// Unwrap returns the error of each failed message, so errors.Is and
// errors.As look through them.
func (e *PublishError) Unwrap() []error {
	errs := make([]error, 0, len(e.Failed))
	for _, f := range e.Failed {
		if f.Err != nil {
			errs = append(errs, f.Err)
		}
	}
	return errs
}
