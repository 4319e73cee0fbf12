package bus_test

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus"
)

// heapBound is what the in-process path may hold above its starting heap,
// however many messages pass: a full queue (1,024 messages), the in-memory
// dedup store (10,000 entries) and the router's working set fit well inside.
const heapBound = 32 << 20

// TestHeapStaysFlat pushes messages through the in-process broker and the
// whole default stack (in-memory dedup store included) and checks that the
// live heap, sampled after a GC every tenth of the run, stays within
// heapBound of where it started. BUSLINE_HEAP_MESSAGES sets the count
// (default 50,000; docs/benchmarks.md records a 1,000,000 run).
func TestHeapStaysFlat(t *testing.T) {
	n := 50_000
	if s := os.Getenv("BUSLINE_HEAP_MESSAGES"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil {
			t.Fatal(err)
		}
	}
	b, err := bus.New(bus.Config{}, bus.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	var handled atomic.Int64
	step := int64(n / 10)
	tick := make(chan struct{}, 10)
	if err := b.Handle("h", "heap", func(context.Context, *message.Message) error {
		if handled.Add(1)%step == 0 {
			tick <- struct{}{}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go b.Run(ctx)
	<-b.Running()

	base := liveHeap()
	published := make(chan error, 1)
	go func() {
		payload := make([]byte, 256)
		for range n {
			if err := b.Publish(ctx, "heap", message.NewMessage(watermill.NewUUID(), payload)); err != nil {
				published <- err
				return
			}
		}
		published <- nil
	}()
	var peak uint64
	for range 10 {
		<-tick
		if h := liveHeap(); h > peak {
			peak = h
		}
	}
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	grew := int64(peak) - int64(base)
	t.Logf("%d messages: live heap %.1f MiB at start, peak %.1f MiB (+%.1f MiB; bound +%d MiB)",
		n, mib(base), mib(peak), float64(grew)/(1<<20), heapBound>>20)
	if grew > heapBound {
		t.Fatalf("live heap grew by %.1f MiB over %d messages, bound is %d MiB", float64(grew)/(1<<20), n, heapBound>>20)
	}
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func liveHeap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }
