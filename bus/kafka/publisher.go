package kafka

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
)

// publisher is the broker's publisher: a Sarama SyncProducer that sends all
// the messages of a Publish call with one SendMessages, instead of
// watermill-kafka's one SendMessage (one round trip) per message. Close
// waits for the Publish calls in flight; a Publish after Close returns
// ErrClosed. It is safe for concurrent use.
type publisher struct {
	mu     sync.RWMutex
	closed bool
	prod   sarama.SyncProducer
}

// newPublisher connects a SyncProducer with the producer configuration sc
// (acks=all, idempotent: see Config.producerSaramaConfig). It fails when no
// broker answers.
func newPublisher(brokers []string, sc *sarama.Config) (*publisher, error) {
	prod, err := sarama.NewSyncProducer(brokers, sc)
	if err != nil {
		return nil, err
	}
	return &publisher{prod: prod}, nil
}

// Publish implements message.Publisher. It marshals every message (see
// [marshaler]), hands them all to Sarama at once and returns when every
// one is acknowledged by all in-sync replicas or has failed. Sarama puts
// the records of one partition into as few produce requests as it can, in
// the order of msgs, so order per partition (and so per key) is the order
// of msgs. When some messages fail, the others are still written and the
// error is a *[PublishError] that lists exactly the failed ones.
func (p *publisher) Publish(topic string, msgs ...*message.Message) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return ErrClosed
	}
	if len(msgs) == 0 {
		return nil
	}

	rb := marshalRecords(topic, msgs)
	recs, failed := rb.recs, rb.failed
	switch len(recs) {
	case 0:
	case 1:
		// SendMessages starts a goroutine; one message needs none.
		if _, _, err := p.prod.SendMessage(recs[0]); err != nil {
			i := rb.at(0)
			failed = append(failed, FailedMessage{Index: i, UUID: msgs[i].UUID, Err: err})
		}
	default:
		if err := p.prod.SendMessages(recs); err != nil {
			failed = appendFailed(failed, err, msgs, &rb)
		}
	}
	if len(failed) == 0 {
		return nil
	}
	slices.SortFunc(failed, func(a, b FailedMessage) int { return cmp.Compare(a.Index, b.Index) })
	return &PublishError{Topic: topic, Total: len(msgs), Failed: failed}
}

// appendFailed appends to failed the messages that err, returned by
// SendMessages(rb.recs), reports.
func appendFailed(failed []FailedMessage, err error, msgs []*message.Message, rb *records) []FailedMessage {
	var perrs sarama.ProducerErrors
	if !errors.As(err, &perrs) {
		// SendMessages reports nothing else today; if it ever does, no
		// message is known to be written.
		for i := range rb.recs {
			j := rb.at(i)
			failed = append(failed, FailedMessage{Index: j, UUID: msgs[j].UUID, Err: err})
		}
		return failed
	}
	at := make(map[*sarama.ProducerMessage]int, len(rb.recs))
	for i, r := range rb.recs {
		at[r] = rb.at(i)
	}
	for _, pe := range perrs {
		j, ok := at[pe.Msg]
		if !ok {
			continue
		}
		failed = append(failed, FailedMessage{Index: j, UUID: msgs[j].UUID, Err: pe.Err})
	}
	return failed
}

// Close implements message.Publisher: it waits for the Publish calls in
// flight, then closes the producer. It is idempotent.
func (p *publisher) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	if err := p.prod.Close(); err != nil {
		return fmt.Errorf("kafka: close publisher: %w", err)
	}
	return nil
}
