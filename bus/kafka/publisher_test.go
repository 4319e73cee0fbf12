package kafka_test

import (
	crand "crypto/rand"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/busline/busline/bus/broker"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/internal/testserver"
	"github.com/busline/busline/schema"
)

// keysByPartition returns, for each of n partitions, perPart keys that
// Kafka's partitioner (murmur2, as franz-go's default) puts there.
func keysByPartition(n, perPart int) [][]string {
	tp := kgo.StickyKeyPartitioner(nil).ForTopic("")
	out := make([][]string, n)
	for i, full := 0, 0; full < n; i++ {
		k := "key-" + strconv.Itoa(i)
		p := tp.Partition(&kgo.Record{Key: []byte(k)}, n)
		if len(out[p]) < perPart {
			out[p] = append(out[p], k)
			if len(out[p]) == perPart {
				full++
			}
		}
	}
	return out
}

// keyedMessage is message seq of key: payload "key/seq".
func keyedMessage(key string, seq int) *message.Message {
	m := message.NewMessage(watermill.NewUUID(), []byte(key+"/"+strconv.Itoa(seq)))
	m.Metadata.Set(schema.KeyPartitionKey, key)
	return m
}

// One Publish of 400 keyed messages goes out in a few produce requests, not
// one per message, and every message arrives once, in order per key.
func TestPublishBatch(t *testing.T) {
	const parts, perKey = 4, 50
	c := newCluster(t)
	var (
		mu       sync.Mutex
		requests int
		records  int
	)
	c.ControlKey(int16(kmsg.Produce), func(r kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		req := r.(*kmsg.ProduceRequest)
		mu.Lock()
		defer mu.Unlock()
		requests++
		for _, tp := range req.Topics {
			for _, p := range tp.Partitions {
				var rb kmsg.RecordBatch
				if err := rb.ReadFrom(p.Records); err == nil {
					records += int(rb.NumRecords)
				}
			}
		}
		return nil, nil, false
	})
	b := newBroker(t, kafka.Config{Brokers: c.ListenAddrs(), Partitions: parts})
	topic := bustest.Name("batch")
	ctx := bustest.Context(t, 30*time.Second)
	if err := b.Prepare(ctx, topic, "g"); err != nil {
		t.Fatal(err)
	}
	keys := slices.Concat(keysByPartition(parts, 2)...)
	var msgs []*message.Message
	for seq := range perKey {
		for _, k := range keys {
			msgs = append(msgs, keyedMessage(k, seq))
		}
	}
	if err := b.Publisher().Publish(topic, msgs...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	mu.Lock()
	t.Logf("%d messages in %d produce requests", records, requests)
	if records != len(msgs) {
		t.Errorf("%d records produced, want %d", records, len(msgs))
	}
	if requests > len(msgs)/10 {
		t.Errorf("%d produce requests for %d messages: not batched", requests, len(msgs))
	}
	mu.Unlock()

	_, ch := subscribe(t, ctx, b, bustest.Name("g"), topic)
	got := receive(t, ch, len(msgs), 20*time.Second)
	want := map[string]bool{}
	for _, m := range msgs {
		want[m.UUID] = true
	}
	next := map[string]int{}
	for _, m := range got {
		if !want[m.UUID] {
			t.Fatalf("unexpected or duplicate message %s %q", m.UUID, m.Payload)
		}
		delete(want, m.UUID)
		key, seq := splitPayload(t, m)
		if seq != next[key] {
			t.Fatalf("key %s: got message %d, want %d", key, seq, next[key])
		}
		next[key]++
	}
}

// splitPayload reads the key and sequence number of a keyedMessage.
func splitPayload(t *testing.T, m *message.Message) (string, int) {
	t.Helper()
	key, s, ok := strings.Cut(string(m.Payload), "/")
	seq, err := strconv.Atoi(s)
	if !ok || err != nil || key != m.Metadata.Get(schema.KeyPartitionKey) {
		t.Fatalf("bad message %q (key %q)", m.Payload, m.Metadata.Get(schema.KeyPartitionKey))
	}
	return key, seq
}

// A batch in which some messages cannot be written reports exactly those,
// by UUID and position, and writes the others: a message over the topic's
// max.message.bytes (rejected by the broker), one over the producer's
// maximum batch size (rejected by franz-go) and one with reserved metadata
// (rejected by the marshaler). The producer stays usable afterwards.
func TestPublishBatchReportsFailedMessages(t *testing.T) {
	const parts = 4
	addrs := testserver.Kafka(t, parts)
	b := newBroker(t, kafka.Config{Brokers: addrs, Partitions: parts})
	topic := bustest.Name("fail")
	ctx := bustest.Context(t, 30*time.Second)

	kc, err := kgo.NewClient(kgo.SeedBrokers(addrs...))
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	maxBytes := "4096"
	if _, err := kadm.NewClient(kc).CreateTopic(ctx, parts, 1, map[string]*string{"max.message.bytes": &maxBytes}, topic); err != nil {
		t.Fatal(err)
	}

	// Partition 3 gets only the message the broker rejects, so that no
	// other message shares its record batch.
	keys := keysByPartition(parts, 1)
	var msgs []*message.Message
	for seq := range 5 {
		for p := range parts - 1 {
			msgs = append(msgs, keyedMessage(keys[p][0], seq))
		}
	}
	brokerBig := keyedMessage(keys[3][0], 0)
	brokerBig.Payload = make([]byte, 16<<10)
	crand.Read(brokerBig.Payload) // incompressible: the producer compresses
	clientBig := message.NewMessage(watermill.NewUUID(), make([]byte, 2<<20))
	reserved := keyedMessage(keys[0][0], 99)
	reserved.Metadata.Set(wkafka.UUIDHeaderKey, "x")
	bad := map[*message.Message]bool{brokerBig: true, clientBig: true, reserved: true}
	msgs = slices.Insert(msgs, 7, brokerBig)
	msgs = slices.Insert(msgs, 2, clientBig)
	msgs = append(msgs, reserved)

	err = b.Publisher().Publish(topic, msgs...)
	var pe *broker.PublishError
	if !errors.As(err, &pe) {
		t.Fatalf("Publish: %v, want a *broker.PublishError", err)
	}
	t.Log(err)
	var wantIdx []int
	var wantIDs []string
	for i, m := range msgs {
		if bad[m] {
			wantIdx = append(wantIdx, i)
			wantIDs = append(wantIDs, m.UUID)
		}
	}
	var gotIdx []int
	for _, f := range pe.Failed {
		gotIdx = append(gotIdx, f.Index)
	}
	if !slices.Equal(gotIdx, wantIdx) || !slices.Equal(pe.UUIDs(), wantIDs) {
		t.Fatalf("failed %v %v, want %v %v", gotIdx, pe.UUIDs(), wantIdx, wantIDs)
	}
	if pe.Topic != topic || pe.Total != len(msgs) {
		t.Errorf("topic %q total %d, want %q %d", pe.Topic, pe.Total, topic, len(msgs))
	}
	for _, f := range pe.Failed {
		if f.UUID != reserved.UUID && !errors.Is(f.Err, kerr.MessageTooLarge) {
			t.Errorf("message %d: %v, want kerr.MessageTooLarge", f.Index, f.Err)
		}
	}

	// The producer recovers.
	after := keyedMessage(keys[3][0], 1)
	if err := b.Publisher().Publish(topic, after, keyedMessage(keys[0][0], 5)); err != nil {
		t.Fatalf("Publish after the failure: %v", err)
	}

	_, ch := subscribe(t, ctx, b, bustest.Name("g"), topic)
	want := len(msgs) - len(bad) + 2
	got := receive(t, ch, want, 20*time.Second)
	seen := map[string]bool{}
	for _, m := range got {
		if slices.Contains(wantIDs, m.UUID) {
			t.Errorf("failed message %s was delivered", m.UUID)
		}
		if seen[m.UUID] {
			t.Errorf("message %s delivered twice", m.UUID)
		}
		seen[m.UUID] = true
	}
	if !seen[after.UUID] {
		t.Error("the message published after the failure is missing")
	}
}

// Close waits for a Publish in flight; Publish after Close is ErrClosed.
func TestPublishCloseWaitsForInFlight(t *testing.T) {
	c := newCluster(t)
	entered := make(chan struct{})
	proceed := make(chan struct{})
	var once sync.Once
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		once.Do(func() {
			close(entered)
			<-proceed
		})
		return nil, nil, false
	})
	b, err := kafka.New(kafka.Config{Brokers: c.ListenAddrs()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	pubErr := make(chan error, 1)
	go func() {
		pubErr <- b.Publisher().Publish(bustest.Name("close"), keyedMessage("k", 0), keyedMessage("k", 1))
	}()
	<-entered
	closed := make(chan error, 1)
	go func() { closed <- b.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a Publish was in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(proceed)
	if err := <-pubErr; err != nil {
		t.Errorf("Publish in flight: %v", err)
	}
	if err := <-closed; err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := b.Publisher().Publish("t", keyedMessage("k", 2)); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Publish after Close: %v, want ErrClosed", err)
	}
}
