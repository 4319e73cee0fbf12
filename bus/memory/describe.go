package memory

import (
	"context"
	"errors"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus/broker"
)

// System is the messaging.system of the in-process broker, which the
// semantic conventions do not list.
const System = "busline.memory"

// Describe implements [broker.Describer]: the system alone (no server).
func (b *Broker) Describe() broker.Description { return broker.Description{System: System} }

// SendDestination implements [broker.Describer]: the topic.
func (b *Broker) SendDestination(topic string) string { return topic }

// ConsumeDestination implements [broker.Describer]: the topic, and the
// group as the consumer group.
func (b *Broker) ConsumeDestination(topic, group string) broker.Destination {
	return broker.Destination{Name: topic, Group: group}
}

// MessageFacts implements [broker.Describer]: the broker knows nothing
// more of a message than its metadata says.
func (b *Broker) MessageFacts(context.Context, *message.Message) broker.MessageFacts {
	return broker.MessageFacts{}
}

// PublishErrorType implements [broker.Describer]: "queue_full" for
// [ErrQueueFull].
func (b *Broker) PublishErrorType(err error) string {
	if errors.Is(err, ErrQueueFull) {
		return "queue_full"
	}
	return ""
}
