package kafka

import (
	"errors"
	"strconv"
	"strings"
)

// ErrClosed is returned by the methods of a closed [Broker] and by Publish
// on its closed publisher.
var ErrClosed = errors.New("kafka: closed")

// PublishError reports the messages of one Publish call that were not
// written to Kafka. Every message of the call that it does not list was
// acknowledged by all in-sync replicas, so publishing again exactly the
// listed messages completes the call (a retry may still duplicate a listed
// message whose acknowledgement, not whose write, was lost). Publishing
// them again does not keep the call's order per key: a listed message then
// lands after the later messages of its key that were written.
//
// Find it with errors.As; errors.Is looks into each failed message's error
// (for example kerr.MessageTooLarge, from github.com/twmb/franz-go/pkg/kerr).
type PublishError struct {
	// Topic is the topic of the Publish call.
	Topic string
	// Total is the number of messages of the Publish call.
	Total int
	// Failed lists the messages that were not written, in the order of the
	// Publish call. It is never empty.
	Failed []FailedMessage
}

// FailedMessage is one message of a Publish call that was not written.
type FailedMessage struct {
	// Index is the message's position in the Publish call's arguments.
	Index int
	// UUID is the message's UUID.
	UUID string
	// Err is why it was not written: a Kafka error code (a *kerr.Error,
	// or one wrapped, from the producer's own size check), a franz-go
	// error such as kgo.ErrRecordTimeout, or the marshaling error.
	Err error
}

// UUIDs returns the UUIDs of the failed messages, in the order of the
// Publish call.
func (e *PublishError) UUIDs() []string {
	ids := make([]string, len(e.Failed))
	for i, f := range e.Failed {
		ids[i] = f.UUID
	}
	return ids
}

// Error lists the failed messages, at most five of them with their errors.
func (e *PublishError) Error() string {
	var sb strings.Builder
	sb.WriteString("kafka: publish to ")
	sb.WriteString(e.Topic)
	sb.WriteString(": ")
	sb.WriteString(strconv.Itoa(len(e.Failed)))
	sb.WriteString(" of ")
	sb.WriteString(strconv.Itoa(e.Total))
	sb.WriteString(" messages failed")
	const show = 5
	for i, f := range e.Failed {
		if i == show {
			sb.WriteString("; and ")
			sb.WriteString(strconv.Itoa(len(e.Failed) - show))
			sb.WriteString(" more")
			break
		}
		if i == 0 {
			sb.WriteString(": ")
		} else {
			sb.WriteString("; ")
		}
		sb.WriteString(f.UUID)
		sb.WriteString(": ")
		if f.Err != nil {
			sb.WriteString(f.Err.Error())
		}
	}
	return sb.String()
}

// Unwrap returns the error of each failed message.
func (e *PublishError) Unwrap() []error {
	errs := make([]error, 0, len(e.Failed))
	for _, f := range e.Failed {
		if f.Err != nil {
			errs = append(errs, f.Err)
		}
	}
	return errs
}
