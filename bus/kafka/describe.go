package kafka

import (
	"context"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus/broker"
	"github.com/busline/busline/schema"
)

// System is the messaging.system of the broker's spans and metrics.
const System = "kafka"

// Describe implements [broker.Describer]: the first seed broker's address
// ([Config.ServerAddress]) and the client id ([Config.EffectiveClientID])
// on both sides.
func (b *Broker) Describe() broker.Description {
	host, port := b.cfg.ServerAddress()
	id := b.cfg.EffectiveClientID()
	return broker.Description{System: System, ServerAddress: host, ServerPort: port, PublishClientID: id, ConsumeClientID: id}
}

// SendDestination implements [broker.Describer]: the topic.
func (b *Broker) SendDestination(topic string) string { return topic }

// ConsumeDestination implements [broker.Describer]: the topic, and the
// group as the consumer group.
func (b *Broker) ConsumeDestination(topic, group string) broker.Destination {
	return broker.Destination{Name: topic, Group: group}
}

// MessageFacts implements [broker.Describer]: the record's partition and
// offset ([RecordFromContext]) and its key (the ce_partitionkey metadata).
func (b *Broker) MessageFacts(ctx context.Context, msg *message.Message) broker.MessageFacts {
	f := broker.MessageFacts{Key: msg.Metadata[schema.KeyPartitionKey]}
	if ri, ok := RecordFromContext(ctx); ok {
		f.Partition, f.Offset, f.HasOffset = ri.Partition, ri.Offset, true
	}
	return f
}

// PublishErrorType implements [broker.Describer]: Kafka's publish errors
// have no name of their own beyond their type.
func (b *Broker) PublishErrorType(error) string { return "" }
