package bus_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/bustest"
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
//     asynchronously on ack and committed with the poll's offsets.
//
// Run: go test -run '^$' -bench BenchmarkKafkaTransaction -benchtime 3x ./bus/
func BenchmarkKafkaTransaction(b *testing.B) {
	addrs := bustest.Kafka(b, 4)
	topic := prefillConsumeTopic(b, addrs, 4, txnBenchRecords)
	b.Run("plain", func(b *testing.B) { benchTransform(b, addrs, topic, txnBenchRecords) })
	b.Run("transactional", func(b *testing.B) {
		benchTransform(b, addrs, topic, txnBenchRecords, bus.WithKafkaTransactions())
	})
}

const txnBenchRecords = 20000

func benchTransform(b *testing.B, addrs []string, topic string, n int, opts ...bus.HandlerOption) {
	b.ReportAllocs()
	b.StopTimer()
	var total time.Duration
	for range b.N {
		out := bustest.Name("txbench-out")
		bs := newConsumeBus(b, addrs, 4)
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
