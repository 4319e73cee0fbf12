package bus

import (
	"context"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/middleware"
)

// DeadLetters subscribes to the dead-letter topic as the consumer group
// [DeadLetterGroup], which keeps every dead letter from the moment the bus
// was first created on the broker. Each message carries the original
// payload and metadata plus the busline_dlq_* keys (reason, error, handler,
// topic, attempts, failure times). Ack a message to remove it from the
// group's backlog (after a [Bus.Replay], or to purge it); Nack it to leave it
// for later. The channel closes when ctx is done or the bus closes.
//
// It works before, during and without [Bus.Run]: it is how tools inspect and
// replay dead letters.
func (b *Bus) DeadLetters(ctx context.Context) (<-chan *message.Message, error) {
	if b.isClosed() {
		return nil, ErrClosed
	}
	sub, err := b.broker.Subscriber(DeadLetterGroup)
	if err != nil {
		return nil, fmt.Errorf("bus: dead-letter subscriber: %w", err)
	}
	ch, err := sub.Subscribe(ctx, b.cfg.DeadLetterTopic)
	if err != nil {
		sub.Close()
		return nil, fmt.Errorf("bus: subscribe to dead letters: %w", err)
	}
	b.mu.Lock()
	b.extraSubs = append(b.extraSubs, sub)
	b.mu.Unlock()
	return ch, nil
}

// Replay publishes a dead letter back to the topic it failed on, with its
// id, payload and correlation kept and the busline_dlq_* keys removed, so
// the failed handler processes it again: its dedup claim was released when
// it failed, so the replay is not taken for a duplicate, while handlers that
// had succeeded skip it as one. It returns the topic it published to. The
// caller acks the dead letter afterwards.
func (b *Bus) Replay(ctx context.Context, deadLetter *message.Message) (string, error) {
	topic, out, err := middleware.Replay(deadLetter)
	if err != nil {
		return "", fmt.Errorf("bus: replay: %w", err)
	}
	out.SetContext(ctx)
	if err := b.pub.Publish(topic, out); err != nil {
		return "", fmt.Errorf("bus: replay to %s: %w", topic, err)
	}
	return topic, nil
}
