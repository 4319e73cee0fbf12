package kafka

import (
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// pauseSlow used to mark p paused and unlock before it called
// PauseFetchPartitions: a finish in between saw paused, resumed (a no-op)
// and cleared paused; the pause then landed and nothing ever resumed the
// partition (found in review). The race, run many times, must never leave
// that state.
func TestPauseSlowCannotLeaveAPauseBehind(t *testing.T) {
	cl, err := kgo.NewClient(kgo.SeedBrokers("127.0.0.1:1"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	hits := 0
	for iter := 0; iter < 20000 && hits == 0; iter++ {
		cl.ResumeFetchPartitions(map[string][]int32{"t": {0, 1}})
		c := &consumer{topic: "t", cl: cl, room: make(chan struct{}, 1), parts: map[topicPartition]*partition{},
			cfg: consumerConfig{maxPerPartition: 2, maxInFlight: 100}}
		c.assigned.Store(2)
		p := &partition{id: 0, topic: "t", stop: make(chan struct{}), settled: make(chan struct{}), lanes: map[string]*lane{}}
		c.parts[topicPartition{"t", 0}] = p
		old := time.Now().Add(-time.Second)
		var items []item
		for i := range 4 {
			items = append(items, item{seq: p.trk.add(&kgo.Record{Offset: int64(i)}, old)})
		}
		p.pending = 4
		c.total.Store(4)
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); c.pauseSlow(time.Now()) }()
		go func() {
			defer wg.Done()
			for i := 0; i < 3; i++ {
				for {
					p.mu.Lock()
					ok := p.paused
					p.mu.Unlock()
					if ok {
						break
					}
					runtime.Gosched()
				}
				c.finish(p, items[i])
			}
		}()
		wg.Wait()
		p.mu.Lock()
		paused := p.paused
		p.mu.Unlock()
		inClient := len(cl.PauseFetchPartitions(nil)["t"]) > 0
		if inClient && !paused {
			hits++
			t.Errorf("iteration %d: partition paused in the client, p.paused false: nothing will resume it", iter)
		}
	}
}

// A retry partition paused while it holds a record not yet due, and also
// by pauseSlow, stays paused in the client until both let go: finish
// (pauseSlow's resume) leaves it paused while it holds; a revoke (stopParts)
// resumes it and drops the held record, so that the partition fetches
// again when it is assigned back (spring-kafka #2525: a paused retry
// partition was never resumed after re-assignment).
func TestDelayedRetryStoppedPartitionIsResumed(t *testing.T) {
	cl, err := kgo.NewClient(kgo.SeedBrokers("127.0.0.1:1"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	c := &consumer{topic: "t", cl: cl, room: make(chan struct{}, 1), wake: make(chan struct{}, 1),
		parts: map[topicPartition]*partition{}, retry: map[string]time.Duration{"t.g.retry.1s": time.Second},
		cfg: consumerConfig{maxPerPartition: 2, maxInFlight: 100}}
	p := &partition{id: 3, topic: "t.g.retry.1s", delay: time.Second, stop: make(chan struct{}),
		settled: make(chan struct{}), drainc: make(chan struct{}), lanes: map[string]*lane{}}
	p.maxOut.Store(-1)
	c.parts[topicPartition{p.topic, p.id}] = p
	now := time.Now()
	due := kgo.RecordHeader{Key: retryDueHeader, Value: []byte(strconv.FormatInt(now.Add(time.Hour).UnixMilli(), 10))}
	ready := &kgo.Record{Topic: p.topic, Partition: 3, Offset: 0}
	waiting := &kgo.Record{Topic: p.topic, Partition: 3, Offset: 1, Headers: []kgo.RecordHeader{due}}
	later := &kgo.Record{Topic: p.topic, Partition: 3, Offset: 2}

	p.mu.Lock()
	n := p.due([]*kgo.Record{ready, waiting, later}, now)
	if n != 1 {
		t.Fatalf("due = %d, want 1 (up to the first record not yet due)", n)
	}
	it := item{rec: ready, seq: p.trk.add(ready, now)}
	p.pending = 1
	c.hold(p, []*kgo.Record{waiting, later}, now)
	p.paused = true // as if pauseSlow paused it too
	p.mu.Unlock()
	paused := func() bool { return len(cl.PauseFetchPartitions(nil)[p.topic]) > 0 }
	if !paused() || len(p.held) != 2 {
		t.Fatalf("holding: paused in client %v, held %d", paused(), len(p.held))
	}
	if _, ok := c.releaseDue(now); !ok || len(p.held) != 2 {
		t.Fatalf("released records not yet due: held %d", len(p.held))
	}
	c.finish(p, it)
	if !paused() {
		t.Fatal("finish resumed a partition that holds a record not yet due")
	}
	c.stopParts([]*partition{p})
	if paused() || len(p.held) != 0 || p.delayed || p.paused {
		t.Fatalf("after stopParts: paused in client %v, held %d, delayed %v, paused %v", paused(), len(p.held), p.delayed, p.paused)
	}
}

// A record of a retry topic is due at its busline_retry_due header, but
// never later than its timestamp plus the topic's delay (and a
// millisecond): a broken header or a clock far ahead cannot hold the
// partition for longer.
func TestDelayedRetryDueIsCappedByTheDelay(t *testing.T) {
	now := time.UnixMilli(time.Now().UnixMilli())
	header := func(v string) []kgo.RecordHeader { return []kgo.RecordHeader{{Key: retryDueHeader, Value: []byte(v)}} }
	ms := func(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }
	for _, c := range []struct {
		name string
		rec  *kgo.Record
		want time.Time
	}{
		{"header", &kgo.Record{Timestamp: now, Headers: header(ms(now.Add(500 * time.Millisecond)))}, now.Add(500 * time.Millisecond)},
		{"far ahead", &kgo.Record{Timestamp: now, Headers: header(ms(now.Add(time.Hour)))}, now.Add(time.Second + time.Millisecond)},
		{"no timestamp", &kgo.Record{Headers: header(ms(now.Add(time.Hour)))}, now.Add(time.Hour)},
		{"broken", &kgo.Record{Timestamp: now, Headers: header("soon")}, time.Time{}},
		{"none", &kgo.Record{Timestamp: now}, time.Time{}},
	} {
		if got := retryDue(c.rec, time.Second); !got.Equal(c.want) {
			t.Errorf("%s: due %v, want %v", c.name, got, c.want)
		}
	}
}
