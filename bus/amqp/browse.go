package amqp

import (
	"context"
	"errors"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Browse returns the messages waiting in group's queue of topic, oldest
// first, mapped as the subscribers map them, without consuming them: it
// gets at most the queue's depth at the start with basic.get and manual
// acks, holding every delivery, then gives them all back with one
// nack(multiple, requeue). RabbitMQ puts requeued messages back at their
// original positions, so the queue is as it was (the messages are marked
// redelivered). A queue that does not exist holds nothing. It serves the
// dead-letter tool's list and show.
func (b *Broker) Browse(ctx context.Context, topic, group string) ([]*message.Message, error) {
	if err := checkNames(topic, group); err != nil {
		return nil, err
	}
	queue := QueueName(topic, group)
	var out []*message.Message
	err := b.withChannel(ctx, b.sub, func(ch *amqp091.Channel) error {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err != nil {
			var aerr *amqp091.Error
			if errors.As(err, &aerr) && aerr.Code == amqp091.NotFound {
				return nil // no queue yet: nothing waits
			}
			return err
		}
		var last uint64
		for range q.Messages {
			d, ok, err := ch.Get(queue, false)
			if err != nil {
				return err
			}
			if !ok {
				break
			}
			last = d.DeliveryTag
			m, _ := marshaler{}.Unmarshal(d) // never fails
			out = append(out, m)
		}
		if last != 0 {
			if err := ch.Nack(last, true, true); err != nil {
				return fmt.Errorf("give the deliveries back: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("amqp: browse %s: %w", queue, err)
	}
	return out, nil
}
