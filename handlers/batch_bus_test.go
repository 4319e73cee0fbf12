package handlers_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/handlers"
	"github.com/busline/busline/internal/ordertest"
	"github.com/busline/busline/schema"
)

// A Batcher registered directly with the bus is correct: every event is
// handled and acked once, no batch exceeds Size. It batches only as many
// messages as the subscription has in flight: one on the in-process broker.
// (bus's TestBatcherOnKafka shows batches across Kafka partitions; it lives
// there because this package checks for leaked goroutines and the bus on
// Kafka leaves some behind after Close.)
func TestBatcherOnTheBus(t *testing.T) {
	for name, cfg := range map[string]func(t *testing.T) bus.Config{
		"memory": func(*testing.T) bus.Config { return bus.Config{} },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			const n, size = 40, 8
			c := cfg(t)
			c.Group, c.DeadLetterTopic = bustest.Name("batch"), bustest.Name("batch-dlq")
			b, err := bus.New(c)
			if err != nil {
				t.Fatal(err)
			}
			r := consumerRegistry(t)
			var (
				mu      sync.Mutex
				seen    = map[string]int{}
				largest int
			)
			all := make(chan struct{})
			batcher := handlers.Batch(r, handlers.BatchConfig{Size: size, MaxWait: 5 * time.Millisecond},
				func(_ context.Context, batch []handlers.Item[ordertest.V3]) error {
					mu.Lock()
					defer mu.Unlock()
					if len(batch) > size {
						t.Errorf("batch of %d", len(batch))
					}
					largest = max(largest, len(batch))
					for _, it := range batch {
						seen[it.Event.OrderID]++
					}
					if len(seen) == n {
						close(all)
					}
					return nil
				})
			topic := bustest.Name("batch-orders")
			if err := b.Handle("batch", topic, batcher.Handle); err != nil {
				t.Fatal(err)
			}
			legacy := v1Registry()
			ctx := bustest.Context(t, 30*time.Second)
			for i := range n {
				id := fmt.Sprint("o-", i)
				if err := handlers.Publish(ctx, b, legacy, topic, ordertest.V1{ID: id, Amount: 1},
					schema.WithPartitionKey(id)); err != nil {
					t.Fatal(err)
				}
			}
			ran := make(chan error, 1)
			go func() { ran <- b.Run(context.Background()) }()
			select {
			case <-all:
			case <-ctx.Done():
				t.Fatalf("handled %d of %d events", len(seen), n)
			}
			if err := b.Close(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-ran; err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			for id, k := range seen {
				if k != 1 {
					t.Errorf("%s handled %d times", id, k)
				}
			}
			if largest != 1 {
				t.Errorf("largest batch %d: the in-process broker has one message in flight", largest)
			}
		})
	}
}
