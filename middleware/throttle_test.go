package middleware_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/middleware"
)

func TestThrottleRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var waits []middleware.ThrottleInfo
		h := middleware.Throttle(middleware.ThrottleConfig{
			Rate: 10, Burst: 1,
			Observer: observer{throttled: func(i middleware.ThrottleInfo) { waits = append(waits, i) }},
		})(ok)
		start := time.Now()
		for range 5 {
			if _, err := h(newMsg("m", "")); err != nil {
				t.Fatal(err)
			}
		}
		if took := time.Since(start); took != 400*time.Millisecond {
			t.Errorf("5 messages at 10/s took %v, want 400ms", took)
		}
		if len(waits) != 4 || waits[0].Limit != "rate" || waits[0].Waited != 100*time.Millisecond {
			t.Errorf("waits %+v", waits)
		}
	})
}

func TestThrottleConcurrency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var running, maxRunning, waits atomic.Int32
		h := middleware.Throttle(middleware.ThrottleConfig{
			Concurrency: 2,
			Observer:    observer{throttled: func(middleware.ThrottleInfo) { waits.Add(1) }},
		})(func(*message.Message) ([]*message.Message, error) {
			n := running.Add(1)
			if n > maxRunning.Load() {
				maxRunning.Store(n)
			}
			time.Sleep(time.Second)
			running.Add(-1)
			return nil, nil
		})
		var wg sync.WaitGroup
		start := time.Now()
		for range 5 {
			wg.Go(func() { _, _ = h(newMsg("m", "")) })
		}
		wg.Wait()
		if maxRunning.Load() != 2 || waits.Load() != 3 || time.Since(start) != 3*time.Second {
			t.Errorf("max running %d, waits %d, took %v", maxRunning.Load(), waits.Load(), time.Since(start))
		}
	})
}

func TestThrottleWaitEndsOnShutdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := middleware.Throttle(middleware.ThrottleConfig{Rate: 0.001, Burst: 1})(ok)
		_, _ = h(newMsg("m", ""))
		ctx, cancel := context.WithCancel(context.Background())
		msg := newMsg("m", "")
		msg.SetContext(ctx)
		time.AfterFunc(time.Second, cancel)
		if _, err := h(msg); !errors.Is(err, context.Canceled) {
			t.Errorf("err %v", err)
		}
	})
}

func TestThrottleZeroIsNoop(t *testing.T) {
	h := middleware.Throttle(middleware.ThrottleConfig{})(ok)
	if allocs := testing.AllocsPerRun(100, func() { _, _ = h(nil) }); allocs != 0 {
		t.Errorf("%v allocs", allocs)
	}
}
