package bus_test

import (
	"context"
	"log/slog"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/broker"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/handlers"
	"github.com/busline/busline/internal/testserver"
	"github.com/busline/busline/middleware"
	"github.com/busline/busline/schema"
)

// BenchmarkKafkaConsume measures consuming, what every Kafka user of the bus
// does all day. Per partition count (p1, p4) one kfake topic is filled
// before the cases run with consumeRecords Busline events of 16 bytes
// ({"n":1000000000+i}, type bench.consumed v1), published by a bus, keyed
// by consumeKeys keys in turn. Each iteration of a case reads the whole
// topic with a new consumer group, from the group's join to the last
// record handled; msgs/s is records over that time.
//
//   - raw_franz: a franz-go group consumer, PollFetches and CommitRecords
//     after each poll: the client the bus consumes with, used directly;
//   - watermill: a bare Watermill router (no middleware) on the stock
//     watermill-kafka v3 subscriber (Sarama), oldest offset;
//   - busline: a bus handler with the default stack and no-op body,
//     "partition" ordering (the default);
//   - busline_key: the same in "key" ordering;
//   - busline_key_no_timeout: busline_key without the stack's timeout step,
//     the floor of the stack when each attempt costs no context.WithTimeout
//     (a step users keep on; this case says what that step costs);
//   - busline_batch: handlers.Batch of size 100 with batch delivery of 100;
//   - router_unordered: the floor of any handler the router runs one message
//     at a time: a bare Watermill router (no middleware, no bus) on the
//     bus's Kafka subscriber in "unordered" ordering (up to 1,024 records
//     in flight), no-op handler;
//   - router_key: the same in "key" ordering, the floor under busline_key;
//   - router_thin: the floor of the router's hand-off: a bare router on
//     the thinnest franz-go subscriber there can be, raw_franz's loop
//     handing the router a message.NewMessage per record (payload only:
//     no metadata, no context, no commit tracking) and waiting for its
//     ack before the next. Not a consumer (it commits what a poll returned,
//     acked or not); what it measures is the router and one record in
//     flight, which is what "partition" ordering also pays.
//
// io1ms runs a handler that waits 1ms (I/O bound) on a one-partition
// topic of ioRecords records over the same 1,000 keys, in "partition" and
// "key" ordering.
//
// Run: go test -run '^$' -bench BenchmarkKafkaConsume -benchtime 3x ./bus/
func BenchmarkKafkaConsume(b *testing.B) {
	for _, parts := range []int32{1, 4} {
		b.Run("p"+strconv.Itoa(int(parts)), func(b *testing.B) {
			addrs := testserver.Kafka(b, parts)
			topic := prefillConsumeTopic(b, addrs, parts, consumeRecords)
			b.Run("raw_franz", func(b *testing.B) { benchConsumeRawFranz(b, addrs, topic, consumeRecords) })
			b.Run("watermill", func(b *testing.B) { benchConsumeWatermill(b, addrs, topic, consumeRecords) })
			b.Run("busline", func(b *testing.B) {
				benchConsumeBusline(b, addrs, parts, topic, consumeRecords, noopConsume)
			})
			b.Run("busline_key", func(b *testing.B) {
				benchConsumeBusline(b, addrs, parts, topic, consumeRecords, noopConsume, bus.WithOrdering(bus.OrderKey))
			})
			b.Run("busline_key_no_timeout", func(b *testing.B) {
				benchConsumeBusline(b, addrs, parts, topic, consumeRecords, noopConsume, bus.WithOrdering(bus.OrderKey),
					bus.HandlerStack(func(c *middleware.StackConfig) { c.Disable |= middleware.StepTimeout }))
			})
			b.Run("busline_batch", func(b *testing.B) { benchConsumeBatch(b, addrs, parts, topic, consumeRecords) })
			b.Run("router_unordered", func(b *testing.B) {
				benchConsumeRouterFloor(b, addrs, topic, consumeRecords, broker.OrderUnordered)
			})
			b.Run("router_key", func(b *testing.B) {
				benchConsumeRouterFloor(b, addrs, topic, consumeRecords, broker.OrderKey)
			})
			b.Run("router_thin", func(b *testing.B) { benchConsumeThin(b, addrs, topic, consumeRecords) })
		})
	}
	b.Run("io1ms", func(b *testing.B) {
		addrs := testserver.Kafka(b, 1)
		topic := prefillConsumeTopic(b, addrs, 1, ioRecords)
		io := func(ctx context.Context, _ *message.Message) error {
			t := time.NewTimer(time.Millisecond)
			defer t.Stop()
			select {
			case <-t.C:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		b.Run("partition", func(b *testing.B) { benchConsumeBusline(b, addrs, 1, topic, ioRecords, io) })
		b.Run("key", func(b *testing.B) {
			benchConsumeBusline(b, addrs, 1, topic, ioRecords, io, bus.WithOrdering(bus.OrderKey))
		})
	})
}

const (
	consumeRecords = 30000
	ioRecords      = 3000
	consumeKeys    = 1000
)

// benchConsumed is the benchmark's event: 16 bytes of JSON.
type benchConsumed struct {
	N int64 `json:"n"`
}

func benchConsumeRegistry() *schema.Registry {
	r := schema.NewRegistry()
	schema.Register[benchConsumed](r, "bench.consumed", 1)
	return r
}

func noopConsume(context.Context, *message.Message) error { return nil }

// prefillConsumeTopic creates a topic of parts partitions and publishes n
// events to it through a bus, keyed by consumeKeys keys in turn.
func prefillConsumeTopic(b *testing.B, addrs []string, parts int32, n int) string {
	b.Helper()
	topic := bustest.Name("consume")
	bs := newConsumeBus(b, addrs, parts)
	defer closeConsumeBus(b, bs)
	reg := benchConsumeRegistry()
	ctx := context.Background()
	const batch = 500
	msgs := make([]*message.Message, 0, batch)
	for i := range n {
		m, err := reg.NewMessage(ctx, benchConsumed{N: 1_000_000_000 + int64(i)})
		if err != nil {
			b.Fatal(err)
		}
		if len(m.Payload) != 16 {
			b.Fatalf("payload %q is not 16 bytes", m.Payload)
		}
		m.Metadata.Set(schema.KeyPartitionKey, "k"+strconv.Itoa(i%consumeKeys))
		msgs = append(msgs, m)
		if len(msgs) == batch || i == n-1 {
			if err := bs.Publish(ctx, topic, msgs...); err != nil {
				b.Fatal(err)
			}
			msgs = msgs[:0]
		}
	}
	return topic
}

func newConsumeBus(b *testing.B, addrs []string, parts int32) *bus.Bus {
	b.Helper()
	bs, err := bus.New(bus.Config{
		Broker: bus.BrokerKafka,
		Group:  bustest.Name("bench"),
		Kafka:  kafka.Config{Brokers: addrs, Partitions: parts},
	}, bus.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		b.Fatal(err)
	}
	return bs
}

func closeConsumeBus(b *testing.B, bs *bus.Bus) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := bs.Close(ctx); err != nil {
		b.Errorf("Close: %v", err)
	}
}

// runConsume runs one iteration: setup outside the timer, then consume
// until done is closed, timed; it returns the time.
func timedConsume(b *testing.B, start func(), done <-chan struct{}) time.Duration {
	b.StartTimer()
	t0 := time.Now()
	start()
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		b.Fatal("not consumed within 5 minutes")
	}
	d := time.Since(t0)
	b.StopTimer()
	return d
}

func benchConsumeRawFranz(b *testing.B, addrs []string, topic string, n int) {
	b.ReportAllocs()
	b.StopTimer()
	var total time.Duration
	for range b.N {
		cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.ConsumerGroup(bustest.Name("raw")),
			kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.DisableAutoCommit())
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{})
		ctx := context.Background()
		total += timedConsume(b, func() {
			got := 0
			for got < n {
				fs := cl.PollFetches(ctx)
				if err := fs.Err(); err != nil {
					b.Fatal(err)
				}
				got += fs.NumRecords()
				if err := cl.CommitRecords(ctx, fs.Records()...); err != nil {
					b.Fatal(err)
				}
			}
			close(done)
		}, done)
		cl.Close()
	}
	reportMsgsPerSec(b, n*b.N, total, "msgs/s")
}

func benchConsumeWatermill(b *testing.B, addrs []string, topic string, n int) {
	benchConsumeRouter(b, topic, n, func() (message.Subscriber, func()) {
		sc := wkafka.DefaultSaramaSubscriberConfig()
		sc.Consumer.Offsets.Initial = sarama.OffsetOldest
		sub, err := wkafka.NewSubscriber(wkafka.SubscriberConfig{
			Brokers:               addrs,
			Unmarshaler:           wkafka.DefaultMarshaler{},
			OverwriteSaramaConfig: sc,
			ConsumerGroup:         bustest.Name("wm"),
		}, watermill.NopLogger{})
		if err != nil {
			b.Fatal(err)
		}
		return sub, func() {}
	})
}

// benchConsumeRouter consumes with a bare Watermill router, no middleware,
// on the subscriber newSub makes for each iteration (its cleanup runs after
// the router closed).
func benchConsumeRouter(b *testing.B, topic string, n int, newSub func() (message.Subscriber, func())) {
	b.ReportAllocs()
	b.StopTimer()
	var total time.Duration
	for range b.N {
		sub, cleanup := newSub()
		r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
		if err != nil {
			b.Fatal(err)
		}
		var got atomic.Int64
		done := make(chan struct{})
		r.AddConsumerHandler("h", topic, sub, func(*message.Message) error {
			if got.Add(1) == int64(n) {
				close(done)
			}
			return nil
		})
		runErr := make(chan error, 1)
		total += timedConsume(b, func() {
			go func() { runErr <- r.Run(context.Background()) }()
		}, done)
		_ = r.Close()
		<-runErr
		cleanup()
	}
	reportMsgsPerSec(b, n*b.N, total, "msgs/s")
}

// benchConsumeBusline consumes with a bus handler h, registered with opts.
func benchConsumeBusline(b *testing.B, addrs []string, parts int32, topic string, n int,
	h func(context.Context, *message.Message) error, opts ...bus.HandlerOption) {
	b.ReportAllocs()
	b.StopTimer()
	var total time.Duration
	for range b.N {
		bs := newConsumeBus(b, addrs, parts)
		var got atomic.Int64
		done := make(chan struct{})
		err := bs.Handle("h", topic, func(ctx context.Context, m *message.Message) error {
			if err := h(ctx, m); err != nil {
				return err
			}
			if got.Add(1) == int64(n) {
				close(done)
			}
			return nil
		}, opts...)
		if err != nil {
			b.Fatal(err)
		}
		total += runConsumeBus(b, bs, done)
	}
	reportMsgsPerSec(b, n*b.N, total, "msgs/s")
}

func runConsumeBus(b *testing.B, bs *bus.Bus, done <-chan struct{}) time.Duration {
	runErr := make(chan error, 1)
	d := timedConsume(b, func() {
		go func() { runErr <- bs.Run(context.Background()) }()
	}, done)
	closeConsumeBus(b, bs)
	if err := <-runErr; err != nil {
		b.Errorf("Run: %v", err)
	}
	return d
}

func benchConsumeBatch(b *testing.B, addrs []string, parts int32, topic string, n int) {
	b.ReportAllocs()
	b.StopTimer()
	var total time.Duration
	reg := benchConsumeRegistry()
	for range b.N {
		bs := newConsumeBus(b, addrs, parts)
		var got atomic.Int64
		done := make(chan struct{})
		var batches atomic.Int64
		bt := handlers.Batch(reg, handlers.BatchConfig{Size: 100}, func(_ context.Context, items []handlers.Item[benchConsumed]) error {
			batches.Add(1)
			if got.Add(int64(len(items))) == int64(n) {
				close(done)
			}
			return nil
		})
		if err := bs.Handle("h", topic, bt.Handle, bus.WithBatchDelivery(bt.Size())); err != nil {
			b.Fatal(err)
		}
		total += runConsumeBus(b, bs, done)
		b.ReportMetric(float64(n)/float64(batches.Load()), "msgs/batch")
	}
	reportMsgsPerSec(b, n*b.N, total, "msgs/s")
}

func benchConsumeRouterFloor(b *testing.B, addrs []string, topic string, n int, ordering string) {
	benchConsumeRouter(b, topic, n, func() (message.Subscriber, func()) {
		br, err := kafka.New(kafka.Config{Brokers: addrs}, nil)
		if err != nil {
			b.Fatal(err)
		}
		sub, err := br.SubscriberWith(bustest.Name("floor"), broker.SubscriberOptions{Ordering: ordering})
		if err != nil {
			b.Fatal(err)
		}
		return sub, func() { _ = br.Close() }
	})
}

func benchConsumeThin(b *testing.B, addrs []string, topic string, n int) {
	benchConsumeRouter(b, topic, n, func() (message.Subscriber, func()) {
		cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.ConsumerGroup(bustest.Name("thin")),
			kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.DisableAutoCommit())
		if err != nil {
			b.Fatal(err)
		}
		return &thinSubscriber{cl: cl}, cl.Close
	})
}

// thinSubscriber is router_thin's subscriber: raw_franz's poll loop handing
// each record to the router as a new message and waiting for its ack,
// nothing else (see BenchmarkKafkaConsume). It serves one Subscribe.
type thinSubscriber struct{ cl *kgo.Client }

func (s *thinSubscriber) Subscribe(ctx context.Context, _ string) (<-chan *message.Message, error) {
	out := make(chan *message.Message)
	go func() {
		defer close(out)
		for {
			fs := s.cl.PollFetches(ctx)
			if ctx.Err() != nil || fs.IsClientClosed() {
				return
			}
			for it := fs.RecordIter(); !it.Done(); {
				m := message.NewMessage("", it.Next().Value)
				select {
				case out <- m:
				case <-ctx.Done():
					return
				}
				select { // one record in flight, as "partition" ordering
				case <-m.Acked():
				case <-m.Nacked():
				case <-ctx.Done():
					return
				}
			}
			_ = s.cl.CommitRecords(ctx, fs.Records()...)
		}
	}()
	return out, nil
}

func (s *thinSubscriber) Close() error { return nil }
