package broker

import (
	"context"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Describer is a broker that describes itself and its messages to
// Busline's telemetry (bus/telemetry), which finds it with a type
// assertion and names no broker: the facts of the OpenTelemetry messaging
// conventions come from here. A broker without it is described by its
// topics alone (no messaging.system, no server). Its methods are safe for
// concurrent use; SendDestination, ConsumeDestination and MessageFacts run
// on the hot path and should not allocate.
type Describer interface {
	// Describe returns the facts that hold for the broker's lifetime.
	Describe() Description
	// SendDestination is the messaging.destination.name of what is
	// published to topic (RabbitMQ: the exchange).
	SendDestination(topic string) string
	// ConsumeDestination is where group consumes topic from.
	ConsumeDestination(topic, group string) Destination
	// MessageFacts returns what the broker knows of msg, whose context is
	// ctx: on a consumed message all of its fields, on a published one
	// only Key is read.
	MessageFacts(ctx context.Context, msg *message.Message) MessageFacts
	// PublishErrorType returns the error.type of an error of the broker's
	// publisher when the broker has a name for it ("queue_full"), else ""
	// (the telemetry classifies it then; [ErrClosed] is "closed").
	PublishErrorType(err error) string
}

// Description is what a broker tells about itself for its spans and
// metrics.
type Description struct {
	// System is the messaging.system value ("kafka", "rabbitmq", ...).
	System string
	// SendOperation is the messaging.operation.name of publishing; zero
	// means "send" (RabbitMQ's conventions say "publish").
	SendOperation string
	// ServerAddress and ServerPort are server.address and server.port;
	// zero values are left out.
	ServerAddress string
	ServerPort    int
	// PublishClientID and ConsumeClientID are the messaging.client.id of
	// send and process spans; "" leaves it out.
	PublishClientID, ConsumeClientID string
}

// Destination names where a consumer group consumes a topic from.
type Destination struct {
	// Name is the messaging.destination.name of process spans and of
	// consumer metrics.
	Name string
	// Group is the messaging.consumer.group.name; "" when Name names the
	// group's own queue already (RabbitMQ).
	Group string
	// Queue is the name of the queue that holds the group's messages,
	// the busline.queue.name of its depth; "" when there is none to name.
	Queue string
}

// MessageFacts are the broker's facts about one message. Each maps to
// one span attribute; zero values are left out. The attribute names are
// the conventions', which name only the systems that have the fact.
type MessageFacts struct {
	// Partition (messaging.destination.partition.id) and Offset
	// (messaging.kafka.offset) are where a consumed record was read;
	// valid when HasOffset.
	Partition int32
	Offset    int64
	HasOffset bool
	// Key is the key the broker partitions by (messaging.kafka.message.key).
	Key string
	// RoutingKey is the routing key a delivery was published with
	// (messaging.rabbitmq.destination.routing_key).
	RoutingKey string
	// DeliveryTag is the delivery tag of a consumed delivery
	// (messaging.rabbitmq.message.delivery_tag); valid when HasDeliveryTag.
	DeliveryTag    uint64
	HasDeliveryTag bool
}

// ConsumerStatser is a broker whose subscriptions report what they hold
// (Kafka). It is safe for concurrent use and answers from the
// subscriptions' own state, without a broker round trip.
type ConsumerStatser interface {
	ConsumerStats() []ConsumerStats
}

// ConsumerStats describes one subscription at one moment.
type ConsumerStats struct {
	Group, Topic string
	// InFlight is the number of records fetched and not yet finished,
	// those held in a delayed tier until due (Held) aside.
	InFlight int
	// PausedPartitions is the number of partitions paused because they
	// hold the most records in flight allowed, or because they hold
	// delayed records not yet due.
	PausedPartitions int
	// AssignedPartitions is the number of partitions the member is
	// assigned, those of its delayed tier included.
	AssignedPartitions int
	// Held is the number of delayed records fetched and held until due
	// (Kafka's retry topics, SubscriberOptions.RetryDelays).
	Held int
	// OldestInFlight is how long ago the oldest record not yet finished
	// was fetched; zero when none is.
	OldestInFlight time.Duration
	// LostPartitions counts the partitions lost since the subscription
	// started (the member's session expired: nothing was committed for
	// them and their in-flight results were dropped).
	LostPartitions int64
}

// Rejecter is a broker whose queues refuse messages when they are full
// (RabbitMQ with a maximum queue length): RejectedPublishes counts the
// messages refused since the broker opened (each made its Publish fail).
type Rejecter interface {
	RejectedPublishes() int64
}
