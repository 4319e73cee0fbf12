package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/busline/busline/bus/broker"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/internal/testserver"
	"github.com/busline/busline/schema"
)

func TestNewRejectsInvalidConfig(t *testing.T) {
	_, err := kafka.New(kafka.Config{InitialOffset: "latest"}, nil)
	if err == nil {
		t.Fatal("New accepted a config without brokers and with a bad initial offset")
	}
}

// New fails, and says so, when no broker answers: franz-go dials lazily, so
// New must check.
func TestNewFailsWhenNoBrokerAnswers(t *testing.T) {
	b, err := kafka.New(kafka.Config{Brokers: []string{"127.0.0.1:1"}}, nil)
	if err == nil {
		_ = b.Close()
		t.Fatal("New succeeded without a broker")
	}
	if !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("error %q does not name the broker", err)
	}
}

// The producer sends every batch with acks=all (-1) and a producer id from
// InitProducerID (idempotence), and what it publishes is consumed intact.
func TestPublisherIsIdempotentWithAcksAll(t *testing.T) {
	c := newCluster(t)
	var (
		mu          sync.Mutex
		initPIDs    int
		batches     int
		badAcks     []int16
		nonIdempBat int
	)
	c.ControlKey(int16(kmsg.InitProducerID), func(kmsg.Request) (kmsg.Response, error, bool) {
		mu.Lock()
		initPIDs++
		mu.Unlock()
		return nil, nil, false
	})
	c.ControlKey(int16(kmsg.Produce), func(r kmsg.Request) (kmsg.Response, error, bool) {
		req := r.(*kmsg.ProduceRequest)
		mu.Lock()
		defer mu.Unlock()
		if req.Acks != -1 {
			badAcks = append(badAcks, req.Acks)
		}
		for _, tp := range req.Topics {
			for _, p := range tp.Partitions {
				var rb kmsg.RecordBatch
				if err := rb.ReadFrom(p.Records); err != nil {
					t.Errorf("decode record batch: %v", err)
					continue
				}
				batches++
				if rb.ProducerID < 0 || rb.FirstSequence < 0 {
					nonIdempBat++
				}
			}
		}
		return nil, nil, false
	})

	b := newBroker(t, kafka.Config{Brokers: c.ListenAddrs()})
	topic := bustest.Name("idem")
	sent := publishN(t, b.Publisher(), topic, 20)
	sent[3].Metadata.Set("never", "sent") // changing a sent message changes nothing

	_, ch := subscribe(t, bustest.Context(t, 30*time.Second), b, bustest.Name("g"), topic)
	got := receive(t, ch, 20, 20*time.Second)
	for i, m := range got {
		if m.UUID != sent[i].UUID || string(m.Payload) != string(sent[i].Payload) {
			t.Errorf("message %d: got %s %q, want %s %q", i, m.UUID, m.Payload, sent[i].UUID, sent[i].Payload)
		}
	}

	mu.Lock()
	defer mu.Unlock()
	if initPIDs == 0 {
		t.Error("no InitProducerID request: the producer is not idempotent")
	}
	if batches == 0 {
		t.Fatal("no produce request seen")
	}
	if len(badAcks) > 0 {
		t.Errorf("produce requests with acks %v, want -1 (all)", badAcks)
	}
	if nonIdempBat > 0 {
		t.Errorf("%d of %d batches without producer id or sequence", nonIdempBat, batches)
	}
}

// The trap: watermill-kafka's default subscriber config starts a new group
// at the newest offset, so messages published before the group first joins
// are never delivered. On one partition, the first message the new group
// receives is a marker published after it subscribed: none of the earlier
// messages arrived.
func TestWatermillDefaultNewestSkipsMessagesBeforeFirstJoin(t *testing.T) {
	addrs := testserver.Kafka(t, 1)
	b := newBroker(t, kafka.Config{Brokers: addrs})
	topic := bustest.Name("newest")
	const n = 50
	publishN(t, b.Publisher(), topic, n)

	sub, err := wkafka.NewSubscriber(wkafka.SubscriberConfig{
		Brokers:       addrs,
		Unmarshaler:   wkafka.DefaultMarshaler{},
		ConsumerGroup: bustest.Name("g"),
		// OverwriteSaramaConfig nil: DefaultSaramaSubscriberConfig, newest.
	}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	ctx := bustest.Context(t, 30*time.Second)
	ch, err := sub.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}

	// Publish a marker every 100ms until the group has joined and the
	// first message arrives.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case m := <-ch:
			m.Ack()
			if m.Metadata.Get("marker") != "1" {
				t.Fatalf("a message published before the first join arrived (%q): the trap is not reproduced", m.Payload)
			}
			t.Logf("with newest, 0 of %d messages published before the group's first join were delivered", n)
			return
		case <-tick.C:
			mk := message.NewMessage(watermill.NewUUID(), []byte("marker"))
			mk.Metadata.Set("marker", "1")
			if err := b.Publisher().Publish(topic, mk); err != nil {
				t.Fatal(err)
			}
		case <-ctx.Done():
			t.Fatal("no message arrived")
		}
	}
}

// Busline's default (oldest) delivers every message published before the
// group's first join.
func TestNewGroupStartsAtOldest(t *testing.T) {
	addrs := testserver.Kafka(t, 3)
	b := newBroker(t, kafka.Config{Brokers: addrs, Partitions: 3})
	topic := bustest.Name("oldest")
	if err := b.Prepare(bustest.Context(t, 10*time.Second), topic, "g"); err != nil {
		t.Fatal(err)
	}
	const n = 50
	sent := publishN(t, b.Publisher(), topic, n)

	_, ch := subscribe(t, bustest.Context(t, 30*time.Second), b, bustest.Name("g"), topic)
	got := receive(t, ch, n, 20*time.Second)
	want := map[string]bool{}
	for _, m := range sent {
		want[m.UUID] = true
	}
	for _, m := range got {
		delete(want, m.UUID)
	}
	if len(want) > 0 {
		t.Fatalf("%d messages missing", len(want))
	}
}

// A record written by a producer that is not Watermill (no
// _watermill_message_uuid header, header values that are not UTF-8, a
// tombstone) is delivered, and the records behind it too.
func TestForeignRecordsAreDelivered(t *testing.T) {
	addrs := testserver.Kafka(t, 1)
	b := newBroker(t, kafka.Config{Brokers: addrs})
	topic := bustest.Name("foreign")

	kc, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	odd := string([]byte{0xff, 0x00, 0xfe, 'x'})
	recs := []*kgo.Record{
		{Topic: topic, Key: []byte("k1"), Value: []byte("with ce_id"), Headers: []kgo.RecordHeader{
			{Key: schema.KeyID, Value: []byte("evt-1")},
			{Key: "odd", Value: []byte(odd)},
			{Key: "empty"},
		}},
		{Topic: topic, Value: []byte("no id at all"), Headers: []kgo.RecordHeader{{Key: "", Value: []byte{0x80}}}},
		{Topic: topic}, // tombstone: no value, no headers
	}
	if err := kc.ProduceSync(bustest.Context(t, 10*time.Second), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	after := message.NewMessage(watermill.NewUUID(), []byte("after"))
	if err := b.Publisher().Publish(topic, after); err != nil {
		t.Fatal(err)
	}

	_, ch := subscribe(t, bustest.Context(t, 30*time.Second), b, bustest.Name("g"), topic)
	got := receive(t, ch, 4, 20*time.Second)

	if m := got[0]; m.UUID != "evt-1" || m.Metadata.Get("odd") != odd || string(m.Payload) != "with ce_id" ||
		m.Metadata.Get(schema.KeyPartitionKey) != "k1" {
		t.Errorf("record 0: uuid %q odd %q payload %q key %q", m.UUID, m.Metadata.Get("odd"), m.Payload, m.Metadata.Get(schema.KeyPartitionKey))
	}
	if _, ok := got[0].Metadata["empty"]; !ok {
		t.Error("record 0: empty header lost")
	}
	if want := fmt.Sprintf("kafka:%s/0/1", topic); got[1].UUID != want {
		t.Errorf("record 1: uuid %q, want %q", got[1].UUID, want)
	}
	if got[1].Metadata.Get("") != "\x80" {
		t.Errorf("record 1: header with empty key: %q", got[1].Metadata.Get(""))
	}
	if want := fmt.Sprintf("kafka:%s/0/2", topic); got[2].UUID != want || len(got[2].Payload) != 0 {
		t.Errorf("record 2: uuid %q payload %q, want %q and none", got[2].UUID, got[2].Payload, want)
	}
	if got[3].UUID != after.UUID {
		t.Errorf("record 3: uuid %q, want %q", got[3].UUID, after.UUID)
	}
}

// A message's ce_partitionkey is its record key, mapped to a partition the
// way Kafka's Java client (and franz-go) map it; messages without a key are
// spread over the partitions.
func TestPartitionKey(t *testing.T) {
	const parts = 8
	addrs := testserver.Kafka(t, parts)
	b := newBroker(t, kafka.Config{Brokers: addrs, Partitions: parts})
	topic := bustest.Name("keys")
	ctx := bustest.Context(t, 30*time.Second)
	if err := b.Prepare(ctx, topic, "g"); err != nil {
		t.Fatal(err)
	}

	// Where franz-go's default (Kafka-compatible, murmur2) partitioner puts
	// each key.
	kc, err := kgo.NewClient(kgo.SeedBrokers(addrs...))
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	keys := []string{"order-1", "order-2", "order-3", "customer-42", "ü-unicode"}
	javaPart := map[string]int32{}
	for _, k := range keys {
		r, err := kc.ProduceSync(ctx, &kgo.Record{Topic: topic, Key: []byte(k), Value: []byte("kgo")}).First()
		if err != nil {
			t.Fatal(err)
		}
		javaPart[k] = r.Partition
	}

	var msgs []*message.Message
	for i := range 40 {
		m := message.NewMessage(watermill.NewUUID(), []byte("busline"))
		if i%2 == 0 {
			m.Metadata.Set(schema.KeyPartitionKey, keys[i/2%len(keys)])
		}
		msgs = append(msgs, m)
	}
	if err := b.Publisher().Publish(topic, msgs...); err != nil {
		t.Fatal(err)
	}

	_, ch := subscribe(t, ctx, b, bustest.Name("g"), topic)
	got := receive(t, ch, len(keys)+len(msgs), 20*time.Second)
	keyless := map[int32]bool{}
	for _, m := range got {
		if string(m.Payload) != "busline" {
			continue
		}
		ri, ok := kafka.RecordFromContext(m.Context())
		if !ok {
			t.Fatal("no record info in message context")
		}
		p := ri.Partition
		k := m.Metadata.Get(schema.KeyPartitionKey)
		if k == "" {
			keyless[p] = true
			continue
		}
		if p != javaPart[k] {
			t.Errorf("key %q on partition %d, Kafka's partitioner puts it on %d", k, p, javaPart[k])
		}
	}
	if len(keyless) < 2 {
		t.Errorf("20 messages without key all went to partitions %v: not spread", keyless)
	}
}

// A nacked message comes back (at once: the bus's stack waits before it
// nacks).
func TestNackRedelivers(t *testing.T) {
	addrs := testserver.Kafka(t, 1)
	b := newBroker(t, kafka.Config{Brokers: addrs})
	topic := bustest.Name("nack")
	sent := publishN(t, b.Publisher(), topic, 1)

	_, ch := subscribe(t, bustest.Context(t, 30*time.Second), b, bustest.Name("g"), topic)
	var first *message.Message
	select {
	case first = <-ch:
	case <-time.After(20 * time.Second):
		t.Fatal("no message")
	}
	first.Nack()
	again := receive(t, ch, 1, 10*time.Second)[0]
	if again.UUID != sent[0].UUID {
		t.Fatalf("redelivered %s, want %s", again.UUID, sent[0].UUID)
	}
}

// Prepare creates the topic with the configured partitions, and a second
// Prepare of an existing topic succeeds.
func TestPrepareCreatesTopic(t *testing.T) {
	addrs := testserver.Kafka(t, 1)
	b := newBroker(t, kafka.Config{Brokers: addrs, Partitions: 4})
	topic := bustest.Name("prep")
	ctx := bustest.Context(t, 20*time.Second)
	for range 2 {
		if err := b.Prepare(ctx, topic, "g"); err != nil {
			t.Fatal(err)
		}
	}
	kc, err := kgo.NewClient(kgo.SeedBrokers(addrs...))
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	td, err := kadm.NewClient(kc).ListTopics(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(td[topic].Partitions); n != 4 {
		t.Fatalf("topic has %d partitions, want 4", n)
	}
}

// Ping succeeds while the cluster runs and fails once it is gone; a closed
// broker reports ErrClosed.
func TestPing(t *testing.T) {
	c := newCluster(t)
	b, err := kafka.New(kafka.Config{Brokers: c.ListenAddrs()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Ping(bustest.Context(t, 10*time.Second)); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	c.Close()
	if err := b.Ping(bustest.Context(t, 3*time.Second)); err == nil {
		t.Fatal("Ping succeeded with the cluster closed")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Ping(context.Background()); !errors.Is(err, broker.ErrClosed) {
		t.Fatalf("Ping after Close: %v, want ErrClosed", err)
	}
}

// After Close, publishing, subscribing and preparing report ErrClosed, and
// Close is idempotent.
func TestClose(t *testing.T) {
	b, err := kafka.New(kafka.Config{Brokers: testserver.Kafka(t, 1)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Subscriber("g"); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := b.Publisher().Publish("t", message.NewMessage("1", nil)); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Publish after Close: %v", err)
	}
	if _, err := b.Subscriber("g"); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Subscriber after Close: %v", err)
	}
	if err := b.Prepare(context.Background(), "t", "g"); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Prepare after Close: %v", err)
	}
	if _, err := b.Subscriber(""); err == nil {
		t.Error("Subscriber accepted an empty group")
	}
}

// Lag is the distance between the group's committed offsets and the end of
// each partition.
func TestLag(t *testing.T) {
	addrs := testserver.Kafka(t, 2)
	b := newBroker(t, kafka.Config{Brokers: addrs, Partitions: 2})
	topic := bustest.Name("lag")
	group := bustest.Name("g")
	ctx := bustest.Context(t, 40*time.Second)
	if err := b.Prepare(ctx, topic, group); err != nil {
		t.Fatal(err)
	}
	if lag, err := b.Lag(ctx, group); err != nil || len(lag) != 0 {
		t.Fatalf("lag of an unknown group: %v, %v; want empty", lag, err)
	}
	publishN(t, b.Publisher(), topic, 10)

	sub, ch := subscribe(t, ctx, b, group, topic)
	receive(t, ch, 10, 20*time.Second)
	// Offsets are committed every second; wait until all 10 are. (An Ack
	// racing with Close may be dropped by watermill-kafka: the record is then
	// redelivered, which is at-least-once, but would make the lag here 1.)
	waitLag(t, ctx, b, group, topic, 0)
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}

	// Three more on partition of "k" only.
	var more []*message.Message
	for range 3 {
		m := message.NewMessage(watermill.NewUUID(), nil)
		m.Metadata.Set(schema.KeyPartitionKey, "k")
		more = append(more, m)
	}
	if err := b.Publisher().Publish(topic, more...); err != nil {
		t.Fatal(err)
	}
	lag, err := b.Lag(ctx, group)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for p, l := range lag[topic] {
		if l != 0 && l != 3 {
			t.Errorf("partition %d lag %d, want 0 or 3", p, l)
		}
		total += l
	}
	if len(lag[topic]) != 2 || total != 3 {
		t.Fatalf("lag %v, want 3 on one of 2 partitions", lag)
	}
}

// SASL PLAIN and SCRAM authenticate the publisher, subscribers and admin.
func TestSASL(t *testing.T) {
	for _, mech := range []string{"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"} {
		t.Run(mech, func(t *testing.T) {
			t.Parallel()
			c := newCluster(t, kfake.EnableSASL(), kfake.Superuser(mech, "alice", "s3cret=,"))
			cfg := kafka.Config{Brokers: c.ListenAddrs(), SASL: kafka.SASLConfig{Mechanism: mech, User: "alice", Password: "s3cret=,"}}
			b := newBroker(t, cfg)
			ctx := bustest.Context(t, 30*time.Second)
			if err := b.Ping(ctx); err != nil {
				t.Fatalf("Ping: %v", err)
			}
			topic := bustest.Name("sasl")
			if err := b.Prepare(ctx, topic, "g"); err != nil {
				t.Fatalf("Prepare: %v", err)
			}
			sent := publishN(t, b.Publisher(), topic, 1)
			_, ch := subscribe(t, ctx, b, bustest.Name("g"), topic)
			if got := receive(t, ch, 1, 20*time.Second); got[0].UUID != sent[0].UUID {
				t.Fatalf("got %s, want %s", got[0].UUID, sent[0].UUID)
			}

			cfg.SASL.Password = "wrong"
			if b2, err := kafka.New(cfg, nil); err == nil {
				_ = b2.Close()
				t.Fatal("New succeeded with a wrong password")
			}
		})
	}
}

// waitLag polls the lag of group on topic until it totals want or ctx ends.
func waitLag(t *testing.T, ctx context.Context, b *kafka.Broker, group, topic string, want int64) {
	t.Helper()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		lag, err := b.Lag(ctx, group)
		if err != nil {
			t.Fatal(err)
		}
		var total int64
		for _, l := range lag[topic] {
			total += l
		}
		if len(lag[topic]) > 0 && total == want {
			return
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("lag %v never totalled %d", lag, want)
		}
	}
}
