package bus

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmw "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/busline/busline/middleware"
)

// BenchmarkStack measures what a message costs on a real Watermill router
// with a no-op handler on the GoChannel broker, end to end (publish,
// subscriber, router, middleware, ack), for three middleware stacks:
//
//   - bare: no middleware;
//   - watermill_stock: Watermill's own Deduplicator, PoisonQueue, Retry,
//     CorrelationID and Recoverer;
//   - default: Busline's default stack (middleware.Stack with a dead-letter
//     publisher and the in-memory dedup store).
//
// Besides wall time per message (ns/op), it reports the CPU time the whole
// process spent per message (cpu-ns/op: publisher, router, middleware, GC),
// which other processes competing for the cores disturb much less.
//
//   - default_no_timeout: default without its timeout step, the floor of
//     the composed stack (see the sub-benchmark);
//   - default_otel: the default stack with tracing and metrics on (real SDK,
//     always sample, batch span processor, discarding exporter; see
//     bench_otel_test.go).
//
// BenchmarkStackOTel has variants of default_otel; it reuses benchRouter. Results and commands: docs/benchmarks.md.
func BenchmarkStack(b *testing.B) {
	b.Run("bare", func(b *testing.B) { benchRouter(b) })
	b.Run("watermill_stock", func(b *testing.B) { benchRouter(b, watermillStockStack(b)...) })
	b.Run("default", func(b *testing.B) {
		benchRouter(b, middleware.Stack(middleware.StackConfig{
			DeadLetter: middleware.DeadLetterConfig{Publisher: benchDeadLetters(b), Topic: benchDeadLetterTopic},
		}))
	})
	b.Run("default_otel", func(b *testing.B) { benchDefaultOTel(b, false) })
	// The floor of one implementation: the default stack without its
	// per-attempt timeout, whose context.WithTimeout (its context, timer
	// and registration with the message's context) is most of what
	// default costs over bare (docs/benchmarks.md, issue 14).
	b.Run("default_no_timeout", func(b *testing.B) {
		benchRouter(b, middleware.Stack(middleware.StackConfig{
			DeadLetter: middleware.DeadLetterConfig{Publisher: benchDeadLetters(b), Topic: benchDeadLetterTopic},
			Disable:    middleware.StepTimeout,
		}))
	})
}

// benchWindow bounds the messages published and not yet handled. Without
// a bound the publisher races ahead, and GoChannel parks a goroutine per
// message waiting for its ack: a slower stack then also pays for scanning
// an ever longer pile of parked stacks at every GC, and the benchmark
// measures the pile rather than the stack.
var benchWindow = 256

const (
	benchTopic           = "bench"
	benchDeadLetterTopic = "bench.deadletter"
)

// benchPubSub returns the GoChannel broker every sub-benchmark uses, with
// the same settings for all, closed when b ends.
func benchPubSub(b *testing.B) *gochannel.GoChannel {
	ps := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 1024}, watermill.NopLogger{})
	b.Cleanup(func() { _ = ps.Close() })
	return ps
}

// benchDeadLetters returns a publisher for dead letters: a GoChannel of its
// own, so that dead letters (none in these benchmarks) never reach the
// benchmarked subscription.
func benchDeadLetters(b *testing.B) message.Publisher { return benchPubSub(b) }

// watermillStockStack is Watermill's stock equivalent of Busline's default
// stack, in a sane order (outermost first): the deduplicator outside the
// poison queue so a duplicate is not dead-lettered, the poison queue outside
// the retry so it sees the final error (Watermill #645), the correlation id
// and the recoverer next to the handler.
func watermillStockStack(b *testing.B) []message.HandlerMiddleware {
	poison, err := wmw.PoisonQueue(benchDeadLetters(b), benchDeadLetterTopic)
	if err != nil {
		b.Fatal(err)
	}
	// Keyed by message UUID like Busline's dedup: the default key, an
	// Adler-32 hash of the payload, merges distinct messages whose payloads
	// collide (most of these benchmark's ids do).
	dedup := &wmw.Deduplicator{KeyFactory: func(m *message.Message) (string, error) { return m.UUID, nil }}
	retry := wmw.Retry{
		MaxRetries:      3,
		InitialInterval: 10 * time.Millisecond,
		MaxInterval:     time.Second,
		Multiplier:      2,
	}
	return []message.HandlerMiddleware{
		dedup.Middleware,
		poison,
		retry.Middleware,
		wmw.CorrelationID,
		wmw.Recoverer,
	}
}

// benchRouter publishes b.N messages through a Watermill router on the
// GoChannel broker, with mws around a no-op handler (the first outermost),
// and returns when the handler saw all of them. Each message has a unique
// UUID and payload, so that no deduplicator skips it.
func benchRouter(b *testing.B, mws ...message.HandlerMiddleware) {
	benchRouterWith(b, nil, mws...)
}

// benchRouterWith is benchRouter with the publisher wrapped by wrap (the
// telemetry's send side); nil publishes to the broker directly.
func benchRouterWith(b *testing.B, wrap func(message.Publisher) message.Publisher, mws ...message.HandlerMiddleware) {
	logger := watermill.NopLogger{}
	ps := benchPubSub(b)
	var pub message.Publisher = ps
	if wrap != nil {
		pub = wrap(ps)
	}
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, logger)
	if err != nil {
		b.Fatal(err)
	}
	n := int64(b.N)
	var handled atomic.Int64
	done := make(chan struct{})
	window := make(chan struct{}, benchWindow)
	h := router.AddConsumerHandler("bench", benchTopic, ps, func(*message.Message) error {
		<-window
		if handled.Add(1) == n {
			close(done)
		}
		return nil
	})
	h.AddMiddleware(mws...)
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- router.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-runErr; err != nil {
			b.Error(err)
		}
	}()
	select {
	case <-router.Running():
	case err := <-runErr:
		b.Fatalf("router stopped: %v", err)
	}

	// Ids are made before the timer starts: the same cost for every stack,
	// and not what is measured.
	ids := make([]string, b.N)
	for i := range ids {
		ids[i] = "00000000-0000-4000-8000-" + strconv.FormatInt(100000000000+int64(i), 10)
	}
	b.ReportAllocs()
	cpu0, cpuOK := processCPU()
	b.ResetTimer()
	go func() {
		for _, id := range ids {
			window <- struct{}{}
			if err := pub.Publish(benchTopic, message.NewMessage(id, message.Payload(id))); err != nil {
				b.Error(err)
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(time.Minute + time.Duration(b.N)*time.Millisecond):
		b.Fatalf("handled %d of %d messages", handled.Load(), b.N)
	}
	b.StopTimer()
	if cpu1, ok := processCPU(); ok && cpuOK {
		b.ReportMetric(float64(cpu1-cpu0)/float64(b.N), "cpu-ns/op")
	}
}
