package middleware_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/middleware"
)

// benchStack runs mw around a no-op handler on a fresh message per
// iteration (fresh UUIDs, so dedup processes each one). The "bare" case
// measures the message creation alone, to subtract.
func benchStack(b *testing.B, mw message.HandlerMiddleware) {
	h := message.HandlerFunc(ok)
	if mw != nil {
		h = mw(h)
	}
	ids := make([]string, 1<<12)
	for i := range ids {
		ids[i] = "00000000-0000-0000-0000-" + strconv.Itoa(100000000000+i)
	}
	round := 0
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if i%len(ids) == 0 && i > 0 {
			round++
			for j := range ids {
				ids[j] = "00000000-0000-0000-" + strconv.Itoa(1000+round) + "-" + strconv.Itoa(100000000000+j)
			}
		}
		msg := message.NewMessage(ids[i%len(ids)], nil)
		msg.SetContext(context.Background())
		if _, err := h(msg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkStack(b *testing.B) {
	dlq := &recordingPublisher{}
	b.Run("bare", func(b *testing.B) { benchStack(b, nil) })
	b.Run("default", func(b *testing.B) {
		benchStack(b, middleware.Stack(middleware.StackConfig{
			DeadLetter: middleware.DeadLetterConfig{Publisher: dlq, Topic: "dlq"},
		}))
	})
	b.Run("default-throttled", func(b *testing.B) {
		benchStack(b, middleware.Stack(middleware.StackConfig{
			DeadLetter: middleware.DeadLetterConfig{Publisher: dlq, Topic: "dlq"},
			Throttle:   middleware.ThrottleConfig{Rate: 1e9, Concurrency: 64},
		}))
	})
	b.Run("no-dedup-no-timeout", func(b *testing.B) {
		benchStack(b, middleware.Stack(middleware.StackConfig{
			DeadLetter: middleware.DeadLetterConfig{Publisher: dlq, Topic: "dlq"},
			Disable:    middleware.StepDedup | middleware.StepTimeout,
		}))
	})
}

func BenchmarkStackStep(b *testing.B) {
	dlq := &recordingPublisher{}
	for name, mw := range map[string]message.HandlerMiddleware{
		"correlation": middleware.Correlation(),
		"nack-delay":  middleware.NackDelay(middleware.NackDelayConfig{}),
		"dead-letter": middleware.DeadLetter(middleware.DeadLetterConfig{Publisher: dlq}),
		"dedup":       middleware.Dedup(middleware.DedupConfig{}),
		"breaker":     middleware.Breaker(middleware.BreakerConfig{}),
		"retry":       middleware.Retry(middleware.RetryConfig{}),
		"throttle":    middleware.Throttle(middleware.ThrottleConfig{Rate: 1e9, Concurrency: 64}),
		"timeout":     middleware.Timeout(time.Minute),
		"recover":     middleware.Recover(),
	} {
		b.Run(name, func(b *testing.B) { benchStack(b, mw) })
	}
}
