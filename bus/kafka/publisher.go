package kafka

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
)

// publisher is the broker's publisher: it hands all the messages of a
// Publish call to one Sarama AsyncProducer at once, instead of
// watermill-kafka's one SendMessage (one round trip) per message, and waits
// for the batch as a whole. Close waits for the Publish calls in flight; a
// Publish after Close returns ErrClosed. It is safe for concurrent use.
//
// Why not Sarama's SyncProducer.SendMessages, which does the same: it
// waits on a channel of its own per message, so the publishing goroutine is
// woken once per acknowledged message; here a batch counts its
// acknowledgements down and wakes its caller once (measured against kfake:
// see BenchmarkBroker/kafka in docs/benchmarks.md).
type publisher struct {
	mu     sync.RWMutex
	closed bool
	prod   sarama.AsyncProducer
	done   sync.WaitGroup // the goroutines reading prod's results
}

// batch is one Publish call in flight: the records' Metadata point to it.
type batch struct {
	pending atomic.Int64  // records neither acknowledged nor failed
	done    chan struct{} // closed when pending reaches 0
	mu      sync.Mutex
	errs    []*sarama.ProducerError
}

// settle counts one record of b as finished.
func (b *batch) settle() { b.settleN(1) }

// settleN counts n records of b as finished.
func (b *batch) settleN(n int64) {
	if b.pending.Add(-n) == 0 {
		close(b.done)
	}
}

// newPublisher connects an AsyncProducer with the producer configuration
// sc (acks=all, idempotent: see Config.producerSaramaConfig; successes and
// errors returned). It fails when no broker answers.
func newPublisher(brokers []string, sc *sarama.Config) (*publisher, error) {
	if !sc.Producer.Return.Successes || !sc.Producer.Return.Errors {
		return nil, fmt.Errorf("kafka: publisher needs Producer.Return.Successes and Producer.Return.Errors")
	}
	prod, err := sarama.NewAsyncProducer(brokers, sc)
	if err != nil {
		return nil, err
	}
	p := &publisher{prod: prod}
	p.done.Go(func() {
		for rec := range prod.Successes() {
			rec.Metadata.(*batch).settle()
		}
	})
	p.done.Go(func() {
		for perr := range prod.Errors() {
			b := perr.Msg.Metadata.(*batch)
			b.mu.Lock()
			b.errs = append(b.errs, perr)
			b.mu.Unlock()
			b.settle()
		}
	})
	return p, nil
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

	// The batch counts one more than its messages until every record is
	// sent: it cannot end while records are still being marshaled.
	b := &batch{done: make(chan struct{})}
	b.pending.Store(int64(len(msgs)) + 1)
	in := p.prod.Input()
	rb := marshalRecords(topic, msgs, func(rec *sarama.ProducerMessage) {
		rec.Metadata = b
		in <- rec
	})
	b.settleN(int64(len(rb.failed)) + 1)
	<-b.done
	failed := rb.failed
	if len(b.errs) > 0 {
		failed = appendFailed(failed, b.errs, msgs, &rb)
	}
	if len(failed) == 0 {
		return nil
	}
	slices.SortFunc(failed, func(a, b FailedMessage) int { return cmp.Compare(a.Index, b.Index) })
	return &PublishError{Topic: topic, Total: len(msgs), Failed: failed}
}

// appendFailed appends to failed the messages of rb whose records errs
// reports.
func appendFailed(failed []FailedMessage, errs []*sarama.ProducerError, msgs []*message.Message, rb *records) []FailedMessage {
	at := make(map[*sarama.ProducerMessage]int, len(rb.recs))
	for i, r := range rb.recs {
		at[r] = rb.at(i)
	}
	for _, pe := range errs {
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
	// Close drains Successes and Errors, and returns the errors it read:
	// none here, since nothing is in flight any more.
	err := p.prod.Close()
	p.done.Wait()
	if err != nil {
		return fmt.Errorf("kafka: close publisher: %w", err)
	}
	return nil
}
