package amqp

import "errors"

// Errors returned by the broker.
var (
	// ErrQueueNotFound is returned by [Broker.QueueDepth] for a queue that
	// does not exist (nobody prepared or subscribed the group yet).
	ErrQueueNotFound = errors.New("amqp: queue not found")
	// ErrQueueMismatch is returned when a queue to declare already exists
	// with other arguments (another queue type, another maximum length):
	// RabbitMQ refuses the declaration with PRECONDITION_FAILED, and cannot
	// change the arguments of an existing queue.
	ErrQueueMismatch = errors.New("amqp: queue exists with other arguments")
	// ErrNotConnected is returned while the connection to RabbitMQ is down
	// and being re-established in the background.
	ErrNotConnected = errors.New("amqp: not connected to RabbitMQ")
	// ErrNacked is the failure of a message RabbitMQ refused (a negative
	// publisher confirm), for example because a queue it routes to is full
	// and rejects publishes.
	ErrNacked = errors.New("amqp: message nacked by RabbitMQ")
	// ErrUnroutable is the failure of a mandatory message RabbitMQ could not
	// route to any queue and returned: nobody prepared or subscribed a
	// consumer group on the topic.
	ErrUnroutable = errors.New("amqp: message returned unroutable: no queue is bound to the topic")
	// ErrChannelClosed is the failure of a message whose channel closed
	// before RabbitMQ confirmed it (the connection dropped, or the publisher
	// closed): it may or may not have been stored.
	ErrChannelClosed = errors.New("amqp: channel closed before RabbitMQ confirmed the message")
)
