package bus

import (
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus/broker"
	"github.com/busline/busline/middleware"
)

// transactional returns b's broker as a broker.Transactional when a
// handler with ho runs in its transactions.
func (b *Bus) transactional(ho handlerOptions) (broker.Transactional, bool) {
	t, ok := b.broker.(broker.Transactional)
	return t, ok && ho.sub.Transactions
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
// [WithKafkaTransactions] on a broker.Transactional: when an attempt fails
// (an error or a panic), what it published into the message's transaction
// is dropped (broker.Transactional.DiscardOutputs), so that a retried
// attempt, or the dead letter, does not publish next to it. A Kafka
// transaction has no savepoint: the outputs are held back per message
// until its ack instead.
func discardFailedOutputs(t broker.Transactional) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) (out []*message.Message, err error) {
			ok := false
			defer func() {
				if !ok || err != nil {
					t.DiscardOutputs(msg.Context())
				}
			}()
			out, err = h(msg)
			ok = true
			return out, err
		}
	}
}
