package amqp

import (
	"context"
	"strconv"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus/broker"
)

// System is the messaging.system of the broker's spans and metrics.
const System = "rabbitmq"

// Describe implements [broker.Describer]: RabbitMQ's conventions name the
// send operation "publish"; the server is [Config.ServerAddress], the
// client ids the connection names of the two connections.
func (b *Broker) Describe() broker.Description {
	host, port := b.cfg.ServerAddress()
	return broker.Description{System: System, SendOperation: "publish", ServerAddress: host, ServerPort: port,
		PublishClientID: PublishConnectionName, ConsumeClientID: ConsumeConnectionName}
}

// SendDestination implements [broker.Describer]: the topic's exchange
// (fanout: no routing key).
func (b *Broker) SendDestination(topic string) string { return ExchangeName(topic) }

// ConsumeDestination implements [broker.Describer]: the conventions'
// {exchange}:{routing key}:{queue} with the routing key empty (fanout),
// and the group's queue.
func (b *Broker) ConsumeDestination(topic, group string) broker.Destination {
	q := QueueName(topic, group)
	return broker.Destination{Name: ExchangeName(topic) + ":" + q, Queue: q}
}

// MessageFacts implements [broker.Describer]: the delivery's routing key
// and delivery tag ([KeyRoutingKey], [KeyDeliveryTag]).
func (b *Broker) MessageFacts(_ context.Context, msg *message.Message) broker.MessageFacts {
	f := broker.MessageFacts{RoutingKey: msg.Metadata[KeyRoutingKey]}
	if v := msg.Metadata[KeyDeliveryTag]; v != "" {
		if tag, err := strconv.ParseUint(v, 10, 64); err == nil {
			f.DeliveryTag, f.HasDeliveryTag = tag, true
		}
	}
	return f
}

// PublishErrorType implements [broker.Describer]: RabbitMQ's publish
// errors have no name of their own beyond their type.
func (b *Broker) PublishErrorType(error) string { return "" }
