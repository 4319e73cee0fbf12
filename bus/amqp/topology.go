package amqp

import (
	"errors"
	"fmt"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// declareExchange declares topic's durable fanout exchange.
func declareExchange(ch *amqp091.Channel, topic string) error {
	return ch.ExchangeDeclare(ExchangeName(topic), amqp091.ExchangeFanout, true, false, false, false, nil)
}

// declareTopology declares topic's exchange, the group's durable queue and
// the binding between them. A fanout exchange ignores routing keys; the
// binding uses the empty one.
func (c Config) declareTopology(ch *amqp091.Channel, topic, group string) error {
	q := QueueName(topic, group)
	if err := c.declareQueue(ch, q, c.queueArgs()); err != nil {
		return err
	}
	if err := declareExchange(ch, topic); err != nil {
		return fmt.Errorf("declare exchange %s: %w", ExchangeName(topic), err)
	}
	if err := ch.QueueBind(q, "", ExchangeName(topic), false, nil); err != nil {
		return fmt.Errorf("bind queue %s to %s: %w", q, ExchangeName(topic), err)
	}
	return nil
}

// declareWaitQueues declares the wait queue of each delay for the group's
// queue of topic. No exchange is bound to them: Redeliver publishes to
// them by name through the default exchange.
func (c Config) declareWaitQueues(ch *amqp091.Channel, topic, group string, delays []time.Duration) error {
	for _, d := range delays {
		if err := c.declareQueue(ch, WaitQueueName(topic, group, d), c.waitQueueArgs(QueueName(topic, group), d)); err != nil {
			return err
		}
	}
	return nil
}

// declareQueue declares the durable queue name with args. When the queue
// exists with other arguments (RabbitMQ answers PRECONDITION_FAILED and
// closes ch) the error wraps [ErrQueueMismatch] and says what to do.
func (c Config) declareQueue(ch *amqp091.Channel, name string, args amqp091.Table) error {
	_, err := ch.QueueDeclare(name, true, false, false, false, args)
	var aerr *amqp091.Error
	if errors.As(err, &aerr) && aerr.Code == amqp091.PreconditionFailed {
		return fmt.Errorf("%w: queue %s exists with other arguments than queue type %q, max queue length %d (RabbitMQ: %s); "+
			"RabbitMQ cannot change them in place: either configure the queue's current settings "+
			"(BUSLINE_AMQP_QUEUE_TYPE, BUSLINE_AMQP_MAX_QUEUE_LENGTH), or stop its consumers, drain it "+
			"and delete it (rabbitmqctl delete_queue %s) so that it is declared anew",
			ErrQueueMismatch, name, c.QueueType, c.MaxQueueLength, aerr.Reason, name)
	}
	if err != nil {
		return fmt.Errorf("declare queue %s: %w", name, err)
	}
	return nil
}

// queueArgs are the arguments of a group's queue. A classic queue gets no
// x-queue-type, as queues declared before QueueType existed.
func (c Config) queueArgs() amqp091.Table {
	args := amqp091.Table{}
	if c.QueueType == QueueTypeQuorum {
		args["x-queue-type"] = QueueTypeQuorum
	}
	if c.MaxQueueLength > 0 {
		args["x-max-length"] = int64(c.MaxQueueLength)
		args["x-overflow"] = "reject-publish"
	}
	return args
}

// waitQueueArgs are the arguments of the wait queue of delay for the
// group's queue target: every message expires after delay and is
// dead-lettered through the default exchange to target alone. A quorum
// wait queue dead-letters at least once (it keeps the message until
// target confirmed it), which RabbitMQ allows only with x-overflow
// reject-publish; a classic one refuses x-dead-letter-strategy
// (PRECONDITION_FAILED on 3.10.8) and dead-letters at most once.
func (c Config) waitQueueArgs(target string, delay time.Duration) amqp091.Table {
	args := amqp091.Table{
		"x-message-ttl":             delay.Milliseconds(),
		"x-dead-letter-exchange":    "",
		"x-dead-letter-routing-key": target,
	}
	if c.QueueType == QueueTypeQuorum {
		args["x-queue-type"] = QueueTypeQuorum
		args["x-dead-letter-strategy"] = "at-least-once"
		args["x-overflow"] = "reject-publish"
	}
	return args
}
