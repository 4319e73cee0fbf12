package bus_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/internal/testserver"
)

// BenchmarkKafkaTransaction measures what Kafka transactions cost a
// consume-then-publish handler. A four-partition kfake topic is filled with
// txnBenchRecords Busline events of 16 bytes over 1,000 keys (as
// BenchmarkKafkaConsume); each iteration reads it with a new consumer group
// through a bus handler that publishes one output per input, with the
// handler's ctx, to an output topic of its own, "partition" ordering, default
// stack. msgs/s is inputs over the time from Run to the last output read by
// a read_committed consumer of the output topic (started before Run), so
// that a transaction's outputs count only once committed.
//
//   - plain: the normal path; each Publish waits for acks=all;
//   - transactional: bus.WithKafkaTransactions; outputs are produced
//     asynchronously on ack and committed with the poll's offsets;
//   - transactional_1: the same with Config.Kafka.MaxInFlight 1, so one
//     record per poll and per transaction, over the first txnBenchOne
//     records: the fixed cost of a transaction (a trickle of input pays
//     it per record).
//
// Run: go test -run '^$' -bench BenchmarkKafkaTransaction -benchtime 3x ./bus/
func BenchmarkKafkaTransaction(b *testing.B) {
	addrs := testserver.Kafka(b, 4)
	topic := prefillConsumeTopic(b, addrs, 4, txnBenchRecords)
	b.Run("plain", func(b *testing.B) { benchTransform(b, addrs, topic, txnBenchRecords, 0) })
	b.Run("transactional", func(b *testing.B) {
		benchTransform(b, addrs, topic, txnBenchRecords, 0, bus.WithKafkaTransactions())
	})
	b.Run("transactional_1", func(b *testing.B) {
		benchTransform(b, addrs, topic, txnBenchOne, 1, bus.WithKafkaTransactions())
	})
}

const (
	txnBenchRecords = 20000
	txnBenchOne     = 1000
)

// benchTransform runs the handler until n outputs were read; maxInFlight is
// Config.Kafka.MaxInFlight (zero: the default).
func benchTransform(b *testing.B, addrs []string, topic string, n, maxInFlight int, opts ...bus.HandlerOption) {
	b.ReportAllocs()
	b.StopTimer()
	var total time.Duration
	for range b.N {
		out := bustest.Name("txbench-out")
		bs, err := bus.New(bus.Config{
			Broker: bus.BrokerKafka,
			Group:  bustest.Name("bench"),
			Kafka:  kafka.Config{Brokers: addrs, Partitions: 4, MaxInFlight: maxInFlight},
		}, bus.WithLogger(slog.New(slog.DiscardHandler)))
		if err != nil {
			b.Fatal(err)
		}
		if err := bs.Handle("h", topic, func(ctx context.Context, m *message.Message) error {
			o := message.NewMessage("", m.Payload)
			return bs.Publish(ctx, out, o)
		}, opts...); err != nil {
			b.Fatal(err)
		}
		cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.ConsumeTopics(out),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
			kgo.AllowAutoTopicCreation())
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{})
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			got := 0
			for got < n && ctx.Err() == nil {
				got += cl.PollFetches(ctx).NumRecords()
			}
			close(done)
		}()
		total += runConsumeBus(b, bs, done)
		cancel()
		cl.Close()
	}
	reportMsgsPerSec(b, n*b.N, total, "msgs/s")
}
