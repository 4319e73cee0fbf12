package kafka_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/internal/testserver"
	"github.com/busline/busline/schema"
)

// On a Watermill router (as the bus runs handlers), one subscriber of a
// four-partition topic handles each partition's messages one at a time, in
// order, and different partitions at the same time: the first handlers
// block until messages of two partitions are in flight at once (no sleeps;
// a deadline fails the test), every partition has at most one message in
// flight, and every key's messages arrive in the order published.
func TestConsumeOrderedPerPartitionParallelAcross(t *testing.T) {
	const parts, perKey = 4, 25
	addrs := testserver.Kafka(t, parts)
	b := newBroker(t, kafka.Config{Brokers: addrs, Partitions: parts})
	topic := bustest.Name("order")
	ctx := bustest.Context(t, 60*time.Second)
	if err := b.Prepare(ctx, topic, "g"); err != nil {
		t.Fatal(err)
	}
	keys := keysByPartition(parts, 2)
	var msgs []*message.Message
	for seq := range perKey {
		for _, ks := range keys {
			for _, k := range ks {
				msgs = append(msgs, keyedMessage(k, seq))
			}
		}
	}
	if err := b.Publisher().Publish(topic, msgs...); err != nil {
		t.Fatal(err)
	}

	var (
		mu          sync.Mutex
		inFlight    = map[int32]int{}
		maxPerPart  int
		maxParts    int
		next        = map[string]int{}
		handled     int
		errs        []string
		parallel    = make(chan struct{})
		closeOnce   sync.Once
		allHandled  = make(chan struct{})
		concurrency = time.NewTimer(20 * time.Second)
	)
	defer concurrency.Stop()
	fail := func(s string) { errs = append(errs, s) }
	handler := func(m *message.Message) error {
		ri, ok := kafka.RecordFromContext(m.Context())
		p := ri.Partition
		if !ok {
			t.Error("no partition in the message context")
			return nil
		}
		key, seq, okPayload := parseKeyed(m)
		mu.Lock()
		if !okPayload {
			fail("bad payload " + string(m.Payload))
		} else if seq != next[key] {
			fail(key + ": out of order")
		} else {
			next[key]++
		}
		inFlight[p]++
		maxPerPart = max(maxPerPart, inFlight[p])
		maxParts = max(maxParts, len(inFlight))
		if len(inFlight) >= 2 {
			closeOnce.Do(func() { close(parallel) })
		}
		mu.Unlock()

		select {
		case <-parallel:
		case <-concurrency.C:
			mu.Lock()
			fail("no two partitions were in flight at once within 20s")
			mu.Unlock()
			closeOnce.Do(func() { close(parallel) })
		}

		mu.Lock()
		if inFlight[p]--; inFlight[p] == 0 {
			delete(inFlight, p)
		}
		if handled++; handled == len(msgs) {
			close(allHandled)
		}
		mu.Unlock()
		return nil
	}

	sub, err := b.Subscriber(bustest.Name("g"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	r.AddConsumerHandler("h", topic, sub, handler)
	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(context.WithoutCancel(ctx)) }()
	defer func() {
		_ = r.Close()
		<-runErr
	}()

	select {
	case <-allHandled:
	case <-ctx.Done():
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("handled %d of %d messages", handled, len(msgs))
	}
	mu.Lock()
	defer mu.Unlock()
	for _, e := range errs {
		t.Error(e)
	}
	if maxPerPart != 1 {
		t.Errorf("up to %d messages of one partition in flight at once, want 1", maxPerPart)
	}
	if maxParts < 2 {
		t.Errorf("at most %d partitions in flight at once, want >= 2", maxParts)
	}
	t.Logf("up to %d of %d partitions in flight at once", maxParts, parts)
	for _, ks := range keys {
		for _, k := range ks {
			if next[k] != perKey {
				t.Errorf("key %s: %d of %d messages", k, next[k], perKey)
			}
		}
	}
}

// parseKeyed reads a keyedMessage.
func parseKeyed(m *message.Message) (key string, seq int, ok bool) {
	key = m.Metadata.Get(schema.KeyPartitionKey)
	p := string(m.Payload)
	if len(p) <= len(key)+1 || p[:len(key)] != key || p[len(key)] != '/' {
		return "", 0, false
	}
	for _, c := range p[len(key)+1:] {
		if c < '0' || c > '9' {
			return "", 0, false
		}
		seq = seq*10 + int(c-'0')
	}
	return key, seq, true
}
