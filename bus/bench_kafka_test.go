package bus_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/internal/testserver"
	"github.com/busline/busline/schema"
)

func init() {
	registerBrokerBenchmark("kafka/raw", benchKafkaRaw)
	registerBrokerBenchmark("kafka/raw_envelope", benchKafkaRawEnvelope)
	registerBrokerBenchmark("kafka/franz_envelope", benchKafkaFranzEnvelope)
	registerBrokerBenchmark("kafka/busline", benchKafkaBusline)
}

// The Kafka scenario, the same for kafka/raw and kafka/busline: publishing
// only. b.N messages of 16 bytes, without key, go in calls of
// kafkaBenchBatch messages, one call after the other from one goroutine, to
// a one-partition topic on an in-process kfake cluster (its own per case);
// each call returns when every message is acknowledged (acks=all,
// idempotent producer).
//
//   - raw: Sarama's SyncProducer.SendMessages, acks=all and idempotent
//     (kafkaBenchSaramaConfig);
//   - raw_envelope: the same with the header every message the bus
//     publishes outside a handler carries, ce_id (a UUID, made per
//     message): the baseline for the same bytes on the wire;
//   - franz_envelope: franz-go's ProduceSync with that header, acks=all
//     and idempotent (franz-go's defaults), no linger: the client the
//     bus's publisher is built on, used directly;
//   - busline: Bus.Publish on a bus with Broker "kafka" and the default
//     telemetry (global OpenTelemetry providers, no-op here): envelope id,
//     correlation, metadata headers, the bus's Kafka publisher (franz-go).
//
// The topic exists and the producer has its producer id before the timer
// starts. msgs/s is b.N over the publishing time.
const kafkaBenchBatch = 100

var kafkaBenchPayload = []byte("0123456789abcdef")

// kafkaBenchSaramaConfig is a safe Sarama producer configuration: acks=all,
// idempotent (with what Sarama requires for it), as Busline's own producer
// was configured when it was built on Sarama.
func kafkaBenchSaramaConfig() *sarama.Config {
	sc := sarama.NewConfig()
	sc.Version = sarama.V2_8_0_0
	sc.ClientID = "bench-raw"
	sc.Producer.RequiredAcks = sarama.WaitForAll
	sc.Producer.Idempotent = true
	sc.Net.MaxOpenRequests = 1
	sc.Producer.Retry.Max = 10
	sc.Producer.Return.Successes = true
	sc.Producer.Return.Errors = true
	sc.Metadata.Retry.Backoff = 500 * time.Millisecond
	return sc
}

func benchKafkaRaw(b *testing.B) { benchKafkaSarama(b, false) }

func benchKafkaRawEnvelope(b *testing.B) { benchKafkaSarama(b, true) }

func benchKafkaSarama(b *testing.B, envelope bool) {
	addrs := testserver.Kafka(b, 1)
	topic := bustest.Name("bench-kafka")
	prod, err := sarama.NewSyncProducer(addrs, kafkaBenchSaramaConfig())
	if err != nil {
		b.Fatal(err)
	}
	defer prod.Close()
	batch := func(k int) []*sarama.ProducerMessage {
		recs := make([]*sarama.ProducerMessage, k)
		for i := range recs {
			recs[i] = &sarama.ProducerMessage{Topic: topic, Value: sarama.ByteEncoder(kafkaBenchPayload)}
			if envelope {
				id := []byte(watermill.NewUUID())
				recs[i].Headers = []sarama.RecordHeader{
					{Key: []byte(schema.KeyID), Value: id},
				}
			}
		}
		return recs
	}
	if err := prod.SendMessages(batch(kafkaBenchBatch)); err != nil { // warm-up: topic, producer id
		b.Fatal(err)
	}

	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for n := b.N; n > 0; n -= kafkaBenchBatch {
		if err := prod.SendMessages(batch(min(n, kafkaBenchBatch))); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	reportMsgsPerSec(b, b.N, elapsed, "msgs/s")
}

func benchKafkaFranzEnvelope(b *testing.B) {
	addrs := testserver.Kafka(b, 1)
	topic := bustest.Name("bench-kafka")
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(addrs...),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(0),
		kgo.AllowAutoTopicCreation(),
	)
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	ctx := context.Background()
	batch := func(k int) []*kgo.Record {
		recs := make([]*kgo.Record, k)
		for i := range recs {
			recs[i] = &kgo.Record{Topic: topic, Value: kafkaBenchPayload,
				Headers: []kgo.RecordHeader{{Key: schema.KeyID, Value: []byte(watermill.NewUUID())}}}
		}
		return recs
	}
	if err := cl.ProduceSync(ctx, batch(kafkaBenchBatch)...).FirstErr(); err != nil { // warm-up
		b.Fatal(err)
	}

	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for n := b.N; n > 0; n -= kafkaBenchBatch {
		if err := cl.ProduceSync(ctx, batch(min(n, kafkaBenchBatch))...).FirstErr(); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	reportMsgsPerSec(b, b.N, elapsed, "msgs/s")
}

func benchKafkaBusline(b *testing.B) {
	addrs := testserver.Kafka(b, 1)
	topic := bustest.Name("bench-kafka")
	bs, err := bus.New(bus.Config{
		Broker: bus.BrokerKafka,
		Kafka:  kafka.Config{Brokers: addrs},
	}, bus.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := bs.Close(ctx); err != nil {
			b.Errorf("Close: %v", err)
		}
	}()
	ctx := context.Background()
	batch := func(k int) []*message.Message {
		msgs := make([]*message.Message, k)
		for i := range msgs {
			msgs[i] = message.NewMessage(watermill.NewUUID(), kafkaBenchPayload)
		}
		return msgs
	}
	if err := bs.Publish(ctx, topic, batch(kafkaBenchBatch)...); err != nil { // warm-up
		b.Fatal(err)
	}

	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for n := b.N; n > 0; n -= kafkaBenchBatch {
		if err := bs.Publish(ctx, topic, batch(min(n, kafkaBenchBatch))...); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	reportMsgsPerSec(b, b.N, elapsed, "msgs/s")
}
