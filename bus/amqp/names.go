package amqp

import (
	"errors"
	"fmt"
	"time"
)

// maxNameLen is RabbitMQ's limit on exchange and queue names, in bytes.
const maxNameLen = 255

// ExchangeName is the durable fanout exchange of topic: the topic itself.
func ExchangeName(topic string) string { return topic }

// QueueName is the durable queue of a consumer group on topic:
// "<topic>.<group>". All subscriptions of the group compete on it.
//
// The name joins two free-form strings, so topic "a.b" with group "c" and
// topic "a" with group "b.c" share a queue; keep the split unambiguous
// (for example, no dots in group names).
func QueueName(topic, group string) string { return topic + "." + group }

// WaitQueueName is the durable queue in which a message of the group's
// queue of topic waits delay before it returns to that queue
// ([Broker.Redeliverer]): "<topic>.<group>.wait.<delay>", the delay as
// [time.Duration.String] writes it (1s, 1m0s, 1h0m0s).
func WaitQueueName(topic, group string, delay time.Duration) string {
	return QueueName(topic, group) + ".wait." + delay.String()
}

func checkTopic(topic string) error {
	if topic == "" {
		return errors.New("amqp: empty topic")
	}
	if len(topic) > maxNameLen {
		return fmt.Errorf("amqp: topic %.40q... is longer than %d bytes", topic, maxNameLen)
	}
	return nil
}

func checkNames(topic, group string) error {
	if err := checkTopic(topic); err != nil {
		return err
	}
	if group == "" {
		return errors.New("amqp: empty consumer group")
	}
	if q := QueueName(topic, group); len(q) > maxNameLen {
		return fmt.Errorf("amqp: queue name %.40q... is longer than %d bytes", q, maxNameLen)
	}
	return nil
}
