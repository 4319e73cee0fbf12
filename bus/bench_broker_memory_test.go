package bus_test

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/memory"
)

// The in-process scenario, the same for memory/watermill and memory/busline:
// one goroutine publishes b.N messages of 16 bytes, one per Publish call, to
// a router with one no-op consumer handler, and the case ends when all are
// handled.

// benchMemoryWatermill publishes b.N messages to a bare Watermill router on
// GoChannel (no middleware, no-op handler) and waits until all are handled:
// the baseline of the in-process broker.
func benchMemoryWatermill(b *testing.B) {
	logger := watermill.NopLogger{}
	pubSub := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 1024}, logger)
	router, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		b.Fatal(err)
	}
	var handled atomic.Int64
	done := make(chan struct{})
	n := int64(b.N)
	router.AddConsumerHandler("h", "bench", pubSub, func(*message.Message) error {
		if handled.Add(1) == n {
			close(done)
		}
		return nil
	})
	go router.Run(context.Background())
	<-router.Running()
	payload := []byte("0123456789abcdef")
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		if err := pubSub.Publish("bench", message.NewMessage(watermill.NewUUID(), payload)); err != nil {
			b.Fatal(err)
		}
	}
	<-done
	reportMsgsPerSec(b, b.N, time.Since(start), "msgs/s")
	b.StopTimer()
	router.Close()
	pubSub.Close()
}

// benchMemoryBusline publishes b.N messages through a bus on the in-process
// broker with the whole default middleware stack and a no-op handler, and
// waits until all are handled.
func benchMemoryBusline(b *testing.B) {
	bs, err := bus.New(bus.Config{Memory: memory.Config{Buffer: 1024}}, bus.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		b.Fatal(err)
	}
	var handled atomic.Int64
	done := make(chan struct{})
	n := int64(b.N)
	if err := bs.Handle("h", "bench", func(context.Context, *message.Message) error {
		if handled.Add(1) == n {
			close(done)
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	go bs.Run(context.Background())
	<-bs.Running()
	ctx := context.Background()
	payload := []byte("0123456789abcdef")
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		if err := bs.Publish(ctx, "bench", message.NewMessage(watermill.NewUUID(), payload)); err != nil {
			b.Fatal(err)
		}
	}
	<-done
	reportMsgsPerSec(b, b.N, time.Since(start), "msgs/s")
	b.StopTimer()
	bs.Close(ctx)
}

func init() {
	registerBrokerBenchmark("memory/watermill", benchMemoryWatermill)
	registerBrokerBenchmark("memory/busline", benchMemoryBusline)
}
