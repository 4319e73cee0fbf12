package amqp

import (
	"fmt"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// declareExchange declares topic's durable fanout exchange.
func declareExchange(ch *amqp091.Channel, topic string) error {
	return ch.ExchangeDeclare(ExchangeName(topic), amqp091.ExchangeFanout, true, false, false, false, nil)
}

// declareTopology declares topic's exchange, the group's durable queue and
// the binding between them. A fanout exchange ignores routing keys; the
// binding uses the empty one.
func declareTopology(ch *amqp091.Channel, topic, group string) error {
	q := QueueName(topic, group)
	if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare queue %s: %w", q, err)
	}
	if err := declareExchange(ch, topic); err != nil {
		return fmt.Errorf("declare exchange %s: %w", ExchangeName(topic), err)
	}
	if err := ch.QueueBind(q, "", ExchangeName(topic), false, nil); err != nil {
		return fmt.Errorf("bind queue %s to %s: %w", q, ExchangeName(topic), err)
	}
	return nil
}
