package bus_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"golang.org/x/sync/errgroup"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/internal/testserver"
	"github.com/busline/busline/schema"
)

// BenchmarkBroker measures messages per second through each broker, once
// with the broker's client library alone ("<broker>/raw", the baseline)
// and once through a Busline bus ("<broker>/busline"), in the same
// scenario; every case reports msgs/s and allocations. Results and
// commands: docs/benchmarks.md, section "Brokers (BenchmarkBroker)".
//
// Cases live in a registry, so that each broker's cases sit in a file of
// their own (bench_broker_<broker>_test.go, package bus_test) and register
// in init:
//
//	func init() {
//		registerBrokerBenchmark("kafka/raw", benchKafkaRaw)
//		registerBrokerBenchmark("kafka/busline", benchKafkaBusline)
//	}
//
// BenchmarkBroker runs them in name order. Report throughput with
// reportMsgsPerSec, so every case computes it the same way.
func BenchmarkBroker(b *testing.B) {
	brokerBenchmarksMu.Lock()
	names := make([]string, 0, len(brokerBenchmarks))
	for name := range brokerBenchmarks {
		names = append(names, name)
	}
	brokerBenchmarksMu.Unlock()
	slices.Sort(names)
	for _, name := range names {
		b.Run(name, brokerBenchmarks[name])
	}
}

var (
	brokerBenchmarksMu sync.Mutex
	brokerBenchmarks   = map[string]func(*testing.B){}
)

// registerBrokerBenchmark adds a case "<broker>/<variant>" to
// BenchmarkBroker. A name registered twice panics.
func registerBrokerBenchmark(name string, fn func(*testing.B)) {
	brokerBenchmarksMu.Lock()
	defer brokerBenchmarksMu.Unlock()
	if _, dup := brokerBenchmarks[name]; dup {
		panic("bus_test: broker benchmark " + name + " registered twice")
	}
	brokerBenchmarks[name] = fn
}

// reportMsgsPerSec reports n messages in elapsed as the metric unit (for
// the whole case: "msgs/s").
func reportMsgsPerSec(b *testing.B, n int, elapsed time.Duration, unit string) {
	b.ReportMetric(float64(n)/elapsed.Seconds(), unit)
}

func init() {
	registerBrokerBenchmark("amqp/raw", benchAMQPRaw)
	registerBrokerBenchmark("amqp/raw_envelope", benchAMQPRawEnvelope)
	registerBrokerBenchmark("amqp/busline", benchAMQPBusline)
}

// The RabbitMQ scenario, the same for amqp/raw and amqp/busline: b.N
// messages of 16 bytes, persistent, to a durable fanout exchange with one
// durable queue bound.
//
//  1. Publish: amqpBenchPublishers goroutines share the b.N messages; each
//     publishes batches of amqpBenchBatch messages, mandatory, with
//     publisher confirms, and waits until all of a batch are confirmed
//     before it sends the next (raw: on a confirm channel of its own,
//     pipelined with PublishWithDeferredConfirmWithContext; busline: one
//     Bus.Publish call per batch).
//  2. Consume: one consumer with prefetch amqpBenchPrefetch takes all b.N
//     from the queue and acks each (raw: amqp091-go's delivery channel,
//     acked one by one; busline: a no-op handler on a running bus with
//     the default middleware stack, amqp Config.Concurrency
//     amqpBenchConcurrency).
//
// amqp/raw_envelope is amqp/raw with the id every message the bus publishes
// outside a handler carries: the cloudEvents_id header and the message_id
// property: the baseline for the same message on the wire. RabbitMQ pays
// for the headers table: publishing is slower. (In runs of all cases in
// one process, consuming also ran at half speed in some rounds, in the
// cases with headers only; see docs/benchmarks.md.)
//
// msgs/s is b.N over both phases; pub-msgs/s and sub-msgs/s are each
// phase's own rate.
const (
	amqpBenchBatch       = 100
	amqpBenchPublishers  = 4 // the default channel pool size
	amqpBenchPrefetch    = 64
	amqpBenchConcurrency = 32
)

var amqpBenchPayload = []byte("0123456789abcdef")

// amqpBenchTopology declares a fresh exchange and queue for one case, and
// deletes them when it ends.
func amqpBenchTopology(b *testing.B, url, group string) (topic string) {
	topic = bustest.Name("bench-amqp")
	conn, err := amqp091.Dial(url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		conn.Close()
		testserver.DeleteAMQP(b, url, []string{amqp.QueueName(topic, group)}, []string{amqp.ExchangeName(topic)})
	})
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	defer ch.Close()
	q := amqp.QueueName(topic, group)
	if err := ch.ExchangeDeclare(amqp.ExchangeName(topic), amqp091.ExchangeFanout, true, false, false, false, nil); err != nil {
		b.Fatal(err)
	}
	if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		b.Fatal(err)
	}
	if err := ch.QueueBind(q, "", amqp.ExchangeName(topic), false, nil); err != nil {
		b.Fatal(err)
	}
	return topic
}

// shares splits n into batches of at most size, dealt round robin to
// workers goroutines: shares[w] lists worker w's batch sizes.
func shares(n, workers, size int) [][]int {
	out := make([][]int, workers)
	for i := 0; n > 0; i++ {
		k := min(size, n)
		out[i%workers] = append(out[i%workers], k)
		n -= k
	}
	return out
}

func benchAMQPRaw(b *testing.B) { benchAMQPClient(b, false) }

func benchAMQPRawEnvelope(b *testing.B) { benchAMQPClient(b, true) }

// benchAMQPClient is amqp/raw, and with envelope amqp/raw_envelope: each
// message carries its id as the bus's messages do (the cloudEvents_id
// header and the message_id property, a UUID made per message).
func benchAMQPClient(b *testing.B, envelope bool) {
	url := testserver.AMQPURL(b)
	const group = "raw"
	topic := amqpBenchTopology(b, url, group)
	conn, err := amqp091.Dial(url)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()

	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var g errgroup.Group
	for _, batches := range shares(b.N, amqpBenchPublishers, amqpBenchBatch) {
		g.Go(func() error {
			ch, err := conn.Channel()
			if err != nil {
				return err
			}
			defer ch.Close()
			if err := ch.Confirm(false); err != nil {
				return err
			}
			dcs := make([]*amqp091.DeferredConfirmation, 0, amqpBenchBatch)
			for _, k := range batches {
				dcs = dcs[:0]
				for range k {
					pub := amqp091.Publishing{
						DeliveryMode: amqp091.Persistent,
						Body:         amqpBenchPayload,
					}
					if envelope {
						id := watermill.NewUUID()
						pub.MessageId = id
						pub.Headers = amqp091.Table{schema.AMQPPrefix + "id": id}
					}
					dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, amqp.ExchangeName(topic), "", true, false, pub)
					if err != nil {
						return err
					}
					dcs = append(dcs, dc)
				}
				for _, dc := range dcs {
					if ok, err := dc.WaitContext(ctx); err != nil || !ok {
						return fmt.Errorf("not confirmed: %v", err)
					}
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	published := time.Since(start)

	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	defer ch.Close()
	if err := ch.Qos(amqpBenchPrefetch, 0, false); err != nil {
		b.Fatal(err)
	}
	deliveries, err := ch.Consume(amqp.QueueName(topic, group), "", false, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	for range b.N {
		d, ok := <-deliveries
		if !ok {
			b.Fatal("deliveries closed")
		}
		if err := d.Ack(false); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	reportMsgsPerSec(b, b.N, elapsed, "msgs/s")
	reportMsgsPerSec(b, b.N, published, "pub-msgs/s")
	reportMsgsPerSec(b, b.N, elapsed-published, "sub-msgs/s")
}

func benchAMQPBusline(b *testing.B) {
	url := testserver.AMQPURL(b)
	cfg := bus.Config{
		Broker: bus.BrokerAMQP,
		Group:  "bench",
		AMQP: amqp.Config{
			URL:         url,
			Prefetch:    amqpBenchPrefetch,
			Concurrency: amqpBenchConcurrency,
		},
	}
	const handler = "h"
	group := cfg.Group + "." + handler
	topic := amqpBenchTopology(b, url, group)
	bs, err := bus.New(cfg, bus.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = bs.Close(ctx)
		// The bus's dead-letter queue and exchange stay: shared by name.
	})
	var handled atomic.Int64
	done := make(chan struct{})
	n := int64(b.N)
	if err := bs.Handle(handler, topic, func(context.Context, *message.Message) error {
		if handled.Add(1) == n {
			close(done)
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()

	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var g errgroup.Group
	for _, batches := range shares(b.N, amqpBenchPublishers, amqpBenchBatch) {
		g.Go(func() error {
			msgs := make([]*message.Message, 0, amqpBenchBatch)
			for _, k := range batches {
				msgs = msgs[:0]
				for range k {
					msgs = append(msgs, message.NewMessage(watermill.NewUUID(), amqpBenchPayload))
				}
				if err := bs.Publish(ctx, topic, msgs...); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	published := time.Since(start)

	runErr := make(chan error, 1)
	go func() { runErr <- bs.Run(ctx) }()
	select {
	case <-done:
	case err := <-runErr:
		b.Fatalf("Run: %v", err)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	reportMsgsPerSec(b, b.N, elapsed, "msgs/s")
	reportMsgsPerSec(b, b.N, published, "pub-msgs/s")
	reportMsgsPerSec(b, b.N, elapsed-published, "sub-msgs/s")
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := bs.Close(cctx); err != nil {
		b.Errorf("Close: %v", err)
	}
	<-runErr
}
