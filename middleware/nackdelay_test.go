package middleware_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/middleware"
)

func TestNackDelayGrowsAndResets(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var next error
		h := middleware.NackDelay(middleware.NackDelayConfig{InitialDelay: time.Second, MaxDelay: 3 * time.Second})(
			func(*message.Message) ([]*message.Message, error) { return nil, next })
		waited := func() time.Duration {
			start := time.Now()
			_, _ = h(newMsg("m", ""))
			return time.Since(start)
		}
		next = errTransient
		for i, want := range []time.Duration{time.Second, 2 * time.Second, 3 * time.Second, 3 * time.Second} {
			if got := waited(); got < want*3/4 || got > want*5/4 {
				t.Errorf("nack %d waited %v, want %v ±25%%", i+1, got, want)
			}
		}
		next = nil
		if got := waited(); got != 0 {
			t.Errorf("success waited %v", got)
		}
		next = errTransient
		if got := waited(); got > 5*time.Second/4 {
			t.Errorf("after a success waited %v, want about 1s", got)
		}
	})
}

func TestNackDelaySkipsShutdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		h := middleware.NackDelay(middleware.NackDelayConfig{})(func(*message.Message) ([]*message.Message, error) {
			return nil, context.Canceled
		})
		msg := newMsg("m", "")
		msg.SetContext(ctx)
		start := time.Now()
		if _, err := h(msg); err != context.Canceled || time.Since(start) != 0 {
			t.Errorf("err %v after %v", err, time.Since(start))
		}
	})
}
