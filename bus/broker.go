package bus

import (
	"context"

	"github.com/ThreeDotsLabs/watermill/message"
)

// broker is what each broker adapter (bus/memory, bus/kafka, bus/amqp)
// provides. Every method is safe for concurrent use.
type broker interface {
	// Publisher returns the broker's one shared publisher. Publish returns
	// only after the broker has accepted every message (Kafka acks=all,
	// RabbitMQ publisher confirms).
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
	// Close releases the broker's connections. Publishers and subscribers
	// are closed first by the bus.
	Close() error
}
