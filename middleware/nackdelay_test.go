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

// Once Stopping is closed a failed message is nacked without its delay, and
// a delay under way ends.
func TestNackDelaySkipsWhenStopping(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		stopping := make(chan struct{})
		h := middleware.NackDelay(middleware.NackDelayConfig{InitialDelay: time.Minute, Stopping: stopping})(
			func(*message.Message) ([]*message.Message, error) { return nil, errTransient })
		time.AfterFunc(time.Second, func() { close(stopping) })
		start := time.Now()
		if _, err := h(newMsg("m", "")); err != errTransient || time.Since(start) != time.Second {
			t.Errorf("err %v after %v; want the error after 1s", err, time.Since(start))
		}
		start = time.Now()
		if _, err := h(newMsg("m", "")); err != errTransient || time.Since(start) != 0 {
			t.Errorf("after stopping: err %v after %v; want the error at once", err, time.Since(start))
		}
	})
}
