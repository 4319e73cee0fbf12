package amqp

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Errors returned by the broker.
var (
	// ErrClosed is returned by operations on a closed Broker, publisher or
	// subscriber.
	ErrClosed = errors.New("amqp: closed")
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

// PublishError is the error of a Publish call in which some messages were
// not confirmed. Failed maps the UUID of each failed message to its cause
// (wrapping [ErrNacked], [ErrUnroutable], [ErrChannelClosed],
// [ErrNotConnected], [ErrClosed], or the error of publishing it); every
// message of the call not in Failed was confirmed by RabbitMQ. Two
// messages of one call with the same UUID share one entry.
//
// errors.Is(err, ErrNacked) reports whether any message failed that way;
// errors.As finds the *PublishError in a wrapped error.
type PublishError struct {
	// Topic is the topic of the Publish call.
	Topic string
	// Total is the number of messages of the call.
	Total int
	// Failed holds the cause of every failed message, by UUID.
	Failed map[string]error
}

// Error lists up to 5 failed messages, in UUID order.
func (e *PublishError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "amqp: publish to %s: %d of %d messages not confirmed", e.Topic, len(e.Failed), e.Total)
	ids := make([]string, 0, len(e.Failed))
	for id := range e.Failed {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for i, id := range ids {
		if i == 5 {
			fmt.Fprintf(&b, "; and %d more", len(ids)-i)
			break
		}
		fmt.Fprintf(&b, "; %s: %v", id, e.Failed[id])
	}
	return b.String()
}

// Unwrap returns the distinct causes, so errors.Is and errors.As look
// through them.
func (e *PublishError) Unwrap() []error {
	var errs []error
	for _, err := range e.Failed {
		if !slices.ContainsFunc(errs, func(x error) bool { return x == err }) {
			errs = append(errs, err)
		}
	}
	return errs
}
