package amqp

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/busline/busline/bus/broker"
)

// Redeliverer declares (idempotently) one wait queue per delay for the queue
// of group on topic ([WaitQueueName]), together with the group's queue, the
// topic's exchange and their binding, and returns what redelivers a
// message of that queue after one of those delays.
//
// A wait queue holds each message for its delay (x-message-ttl), then
// RabbitMQ dead-letters it through the default exchange with the group's
// queue name as routing key (x-dead-letter-exchange "",
// x-dead-letter-routing-key [QueueName]), so it returns to that group's
// queue alone, not to the other groups bound to the topic. Nothing
// consumes a wait queue, so a waiting message holds no consumer; wait
// queues are durable and messages persistent, so a message survives a
// restart of RabbitMQ while it waits (its delay counts from when it
// entered the wait queue). One queue per delay because RabbitMQ expires
// messages only at the head of a queue: a short delay behind a long one
// would wait for the long one.
//
// Redeliver publishes msg (UUID, metadata and payload as Publish writes
// them) persistent to the wait queue of delay, which must be one of
// delays, on the publisher's channels, and returns once RabbitMQ confirmed
// it: the error wraps [ErrNacked], [ErrUnroutable] (the wait queue is
// gone), [ErrChannelClosed], [ErrNotConnected] or [broker.ErrClosed] as for
// Publish. ctx bounds sending, not the wait for the confirm, which ends
// when RabbitMQ answers or the channel closes. After a reconnect, and
// after a call that found its wait queue gone ([ErrUnroutable]), the next
// Redeliver declares the queues again. The message comes back with
// [KeyExchange] "" and [KeyRoutingKey] the group's queue name, and with
// RabbitMQ's x-death headers. It is safe for concurrent use.
//
// With QueueType quorum the wait queues dead-letter at least once; with
// classic queues, at most once: a message whose wait ends while the
// group's queue is missing is dropped by RabbitMQ. For the same reason
// Redeliverer refuses classic queues with MaxQueueLength (a full queue
// would drop messages coming back from their wait; measured on 3.10.8). A
// quorum group's queue accepts them past its bound.
//
// delays must be positive whole milliseconds (RabbitMQ's TTL unit) and
// distinct.
func (b *Broker) Redeliverer(topic, group string, delays []time.Duration) (interface {
	Redeliver(ctx context.Context, msg *message.Message, delay time.Duration) error
}, error) {
	if err := checkNames(topic, group); err != nil {
		return nil, err
	}
	cfg := b.cfg
	var errs []error
	if len(delays) == 0 {
		errs = append(errs, errors.New("amqp: redeliverer: no delays"))
	}
	if err := broker.ValidateDelays(delays); err != nil {
		errs = append(errs, fmt.Errorf("amqp: redeliverer: %w", err))
	}
	for _, d := range delays {
		if len(WaitQueueName(topic, group, d)) > maxNameLen {
			errs = append(errs, fmt.Errorf("amqp: redeliverer: wait queue name %.40q... is longer than %d bytes", WaitQueueName(topic, group, d), maxNameLen))
		}
	}
	errs = append(errs, cfg.ValidateDelayedTier(true))
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	delays = slices.Clone(delays)
	names := make([]string, len(delays))
	for i, d := range delays {
		names[i] = d.String()
	}
	r := &redeliverer{b: b, queue: QueueName(topic, group), dsts: make(map[time.Duration]destination, len(delays))}
	declare := func(ch *amqp091.Channel) error {
		if err := cfg.declareTopology(ch, topic, group); err != nil {
			return err
		}
		return cfg.declareWaitQueues(ch, topic, group, delays)
	}
	for _, d := range delays {
		r.dsts[d] = destination{
			key:        declKey{wait: true, name: r.queue + " " + strings.Join(names, ",")},
			routingKey: WaitQueueName(topic, group, d),
			mandatory:  true, // a wait queue deleted under us must not swallow the message
			declare:    declare,
		}
	}
	conn, gen, err := b.pubc.current()
	if err == nil {
		err = b.pub.declare(conn, gen, r.dsts[delays[0]])
	}
	if err != nil {
		return nil, fmt.Errorf("amqp: redeliverer of %s: %w", r.queue, err)
	}
	return r, nil
}

// redeliverer redelivers messages of one group's queue through its wait
// queues. See [Broker.Redeliverer].
type redeliverer struct {
	b     *Broker
	queue string
	dsts  map[time.Duration]destination
}

// Redeliver publishes msg to the wait queue of delay and returns once
// RabbitMQ confirmed it. See [Broker.Redeliverer].
func (r *redeliverer) Redeliver(ctx context.Context, msg *message.Message, delay time.Duration) error {
	dst, ok := r.dsts[delay]
	if !ok {
		return fmt.Errorf("amqp: redeliver %s: delay %v is not one of the delays declared for %s", msg.UUID, delay, r.queue)
	}
	if ctx == nil {
		ctx = context.Background()
	}
	msg = withoutDeaths(msg)
	if failed := r.b.pub.send(ctx, dst, []*message.Message{msg}); len(failed) > 0 {
		err := failed[0].Err
		if errors.Is(err, ErrUnroutable) {
			// The wait queue is gone (deleted by hand): the next call
			// declares it again.
			r.b.pub.forget(dst.key)
			return fmt.Errorf("amqp: redeliver %s: wait queue %s is missing (the next call declares it again): %w", msg.UUID, dst.routingKey, err)
		}
		return fmt.Errorf("amqp: redeliver %s to %s: %w", msg.UUID, dst.routingKey, err)
	}
	return nil
}

// withoutDeaths returns msg, or a copy of it without the x-death,
// x-first-death-* and x-last-death-* headers RabbitMQ added when an earlier
// round's wait ended: sent back as strings they would go stale (RabbitMQ
// counts the rounds afresh in a new x-death table each time; the budget's
// own busline_retry_* headers count them).
func withoutDeaths(msg *message.Message) *message.Message {
	death := func(k string) bool {
		return k == "x-death" || strings.HasPrefix(k, "x-first-death-") || strings.HasPrefix(k, "x-last-death-")
	}
	found := false
	for k := range msg.Metadata {
		if death(k) {
			found = true
			break
		}
	}
	if !found {
		return msg
	}
	c := msg.Copy()
	c.SetContext(msg.Context())
	maps.DeleteFunc(c.Metadata, func(k, _ string) bool { return death(k) })
	return c
}

// ValidateDelayedTier reports, when the delayed tier is on, a
// configuration that would lose messages in it: a MaxQueueLength with
// classic queues, which dead-letter at most once, so a message coming back
// from its wait to a full queue would be dropped.
func (c Config) ValidateDelayedTier(on bool) error {
	if on && c.MaxQueueLength > 0 && c.QueueType != QueueTypeQuorum {
		return fmt.Errorf("amqp: delayed redelivery with max queue length %d needs queue type %s (classic queues "+
			"dead-letter at most once, so a message coming back from its wait to a full queue would be dropped), or no "+
			"delayed tier", c.MaxQueueLength, QueueTypeQuorum)
	}
	return nil
}
