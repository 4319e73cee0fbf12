package kafka

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/busline/busline/bus/broker"
)

// publisher is the broker's publisher, on a franz-go producer of its own:
// acks=all and idempotent, so that its retries neither duplicate nor
// reorder records. It hands all the messages of a Publish call to the
// producer at once and waits for the call as a whole.
// Close waits for the Publish calls in flight; a Publish after Close
// returns broker.ErrClosed. It is safe for concurrent use.
//
// Why franz-go and not Sarama (which watermill-kafka's subscriber uses):
// Sarama's idempotent producer keeps one produce request in flight and
// sends the first record of a batch in a request of its own, behind five
// goroutine hand-offs per record. Against kfake, batches of 100 16-byte
// records with the ce_id header every bus message carries, Sarama's
// SyncProducer.SendMessages did about 150k msgs/s and franz-go's
// ProduceSync 390-420k with the same acks=all and idempotence
// (BenchmarkBroker/kafka/raw_envelope and franz_envelope in
// docs/benchmarks.md). The records are the same
// either way; franz-go compresses their batches with snappy where the
// brokers support it, which every Kafka client reads.
type publisher struct {
	mu     sync.RWMutex
	closed bool
	cl     *kgo.Client
}

// deliveryTimeout bounds how long the producer keeps retrying a record
// (a broker down, a leader election) before Publish reports it failed. It
// is Kafka's own delivery.timeout.ms default divided by four: long enough
// for a leader election, short enough that a caller hears about an outage.
const deliveryTimeout = 30 * time.Second

// producerOptions are the franz-go options of the publisher on top of the
// connection's (Config.kgoOptions):
//
//   - acks=all, idempotent (franz-go's default, never switched off here):
//     the producer's own retries neither duplicate nor reorder records;
//   - no linger: a Publish waits for its acknowledgements, so a linger
//     would only add latency;
//   - Kafka's own key partitioner: murmur2 of the key, so a key goes to the
//     same partition as from the Java client and every client that follows
//     it; records without a key stick to a partition for a while;
//   - topics created on first use where the brokers allow it (as Sarama
//     asked for);
//   - a record fails after timeout even when its request is in flight
//     (AllowIdempotentProduceCancellation). By default an idempotent
//     franz-go producer waits for a definite answer about a written
//     request, which a crashed broker or a network split may never give:
//     Publish, and with it Close, would hang. The price: a record reported
//     failed may have been written, so publishing it again may duplicate it
//     (at least once, which the consumers' dedup absorbs). Kafka's Java
//     producer fails records after delivery.timeout.ms the same way.
//
// The last one only when cancellable: franz-go refuses it on a
// transactional producer (transact.go), where a record whose answer never
// comes keeps its transaction open until the brokers abort it.
func producerOptions(timeout time.Duration, cancellable bool) []kgo.Opt {
	opts := []kgo.Opt{
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(0),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
		kgo.AllowAutoTopicCreation(),
		kgo.RecordDeliveryTimeout(timeout),
	}
	if cancellable {
		opts = append(opts, kgo.AllowIdempotentProduceCancellation())
	}
	return opts
}

// newPublisher connects a producer with producerOptions(timeout) and the
// connection options opts (see Config.kgoOptions), which come last and so
// override the former: Config.PartitionerOptions in opts replaces the
// default partitioner. It fails when opts are invalid; brokers are dialled
// on first use.
func newPublisher(opts []kgo.Opt, timeout time.Duration) (*publisher, error) {
	cl, err := kgo.NewClient(append(producerOptions(timeout, true), opts...)...)
	if err != nil {
		return nil, err
	}
	return &publisher{cl: cl}, nil
}

// Publish implements message.Publisher. It marshals every message (see
// [marshalRecords]), hands all the records to the producer at once
// (ProduceSync) and returns when every one is acknowledged by all in-sync
// replicas or has failed. The producer puts the records of one partition
// into as few produce requests as it can, in the order of msgs, so order
// per partition (and so per key) is the order of msgs. When some messages
// fail, the others are still written and the error is a *[broker.PublishError]
// that lists exactly the failed ones. A record that the brokers have not
// acknowledged after deliveryTimeout fails, and with it every record
// behind it on its partition. The messages' contexts are not watched: on
// the shared producer, a cancelled context would fail other callers'
// records too. Messages whose context is that of a message a
// transactional subscription delivered (broker.SubscriberOptions.Transactions),
// or derives from it, go into that message's transaction instead: Publish
// only marshals them and returns, they are produced when the message is
// acked (dropped when the attempt fails, see [Broker.DiscardOutputs]), and they
// become visible to read_committed readers only if the transaction
// commits.
func (p *publisher) Publish(topic string, msgs ...*message.Message) error {
	if len(msgs) > 0 {
		// A handler of a transactional subscription publishing with
		// its message's context: into the poll's transaction
		// (transact.go).
		tm, err := txnOf(msgs)
		if err != nil {
			return err
		}
		if tm != nil {
			return produce(tm.buffer, topic, msgs)
		}
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return broker.ErrClosed
	}
	if len(msgs) == 0 {
		return nil
	}
	return produce(p.cl.ProduceSync, topic, msgs)
}

// produce marshals msgs, produces them with produceSync and reports the
// failed ones (see publisher.Publish): the one implementation behind the
// shared producer and a transaction's.
func produce(produceSync func(context.Context, ...*kgo.Record) kgo.ProduceResults, topic string, msgs []*message.Message) error {
	rb := marshalRecords(topic, msgs)
	failed := rb.failed
	// The results come in the order the records finished, not the order
	// they were given: a failed one is found by its record.
	var at map[*kgo.Record]int
	for _, r := range produceSync(context.Background(), rb.recs...) {
		if r.Err == nil {
			continue
		}
		if at == nil {
			at = make(map[*kgo.Record]int, len(rb.recs))
			for i, rec := range rb.recs {
				at[rec] = rb.at(i)
			}
		}
		j := at[r.Record]
		failed = append(failed, broker.FailedMessage{Index: j, UUID: msgs[j].UUID, Err: r.Err})
	}
	if len(failed) == 0 {
		return nil
	}
	slices.SortFunc(failed, func(a, b broker.FailedMessage) int { return cmp.Compare(a.Index, b.Index) })
	return &broker.PublishError{Topic: topic, Total: len(msgs), Failed: failed}
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
	p.cl.Close() // nothing is buffered: every Publish waited for its records
	return nil
}
