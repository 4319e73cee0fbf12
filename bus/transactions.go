package bus

import (
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/middleware"
)

// subscriberConfigurer is the capability of a broker whose subscribers take
// a handler's ordering, batch delivery and transactions (Kafka).
type subscriberConfigurer interface {
	SubscriberWith(group string, cfg kafka.SubscriberConfig) (message.Subscriber, error)
}

// transactional reports whether a handler with ho runs in Kafka
// transactions on b's broker.
func (b *Bus) transactional(ho handlerOptions) bool {
	_, ok := b.broker.(subscriberConfigurer)
	return ho.transactions && ok
}

// transactionalStack adapts a transactional handler's stack: the dedup
// step goes. The transaction is the dedup: a record whose transaction
// committed is never delivered again, and one whose transaction aborted
// must be handled again, which a dedup store that recorded its first
// handling would swallow, losing its outputs.
func transactionalStack(stack *middleware.StackConfig) {
	stack.Disable |= middleware.StepDedup
}

// discardFailedOutputs is the innermost middleware of a handler with
// [WithKafkaTransactions]: when an attempt fails (an error or a panic), what
// it published into the message's Kafka transaction is dropped
// ([kafka.DiscardOutputs]), so that a retried attempt, or the dead letter,
// does not publish next to it. A Kafka transaction has no savepoint: the
// outputs are held back per message until its ack instead. On other brokers
// there is nothing to drop and it costs one context lookup per failure.
func discardFailedOutputs(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) (out []*message.Message, err error) {
		ok := false
		defer func() {
			if !ok || err != nil {
				kafka.DiscardOutputs(msg.Context())
			}
		}()
		out, err = h(msg)
		ok = true
		return out, err
	}
}
