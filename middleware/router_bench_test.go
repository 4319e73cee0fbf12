package middleware_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/busline/busline/middleware"
)

// BenchmarkRouter measures a no-op handler on a real Watermill router and
// the in-process broker, bare and with the default stack: the cost per
// message a service sees. The bus has the authoritative router benchmark;
// this one keeps the stack honest from inside its package.
func BenchmarkRouter(b *testing.B) {
	b.Run("bare", func(b *testing.B) { benchRouter(b, nil) })
	b.Run("stack", func(b *testing.B) {
		benchRouter(b, middleware.Stack(middleware.StackConfig{
			DeadLetter: middleware.DeadLetterConfig{Publisher: &recordingPublisher{}, Topic: "dlq"},
		}))
	})
}

func benchRouter(b *testing.B, mw message.HandlerMiddleware) {
	logger := watermill.NopLogger{}
	pubsub := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 1024}, logger)
	defer pubsub.Close()
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, logger)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{}, 1024)
	h := router.AddConsumerHandler("bench", "bench", pubsub, func(*message.Message) error {
		done <- struct{}{}
		return nil
	})
	if mw != nil {
		h.AddMiddleware(mw)
	}
	go func() { _ = router.Run(context.Background()) }()
	<-router.Running()
	defer router.Close()

	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		for i := range b.N {
			_ = pubsub.Publish("bench", message.NewMessage("id-"+strconv.Itoa(i), nil))
		}
	}()
	for range b.N {
		<-done
	}
}
