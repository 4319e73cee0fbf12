package kafka

import (
	"runtime"
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
