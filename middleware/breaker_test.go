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

func TestBreakerPausesWhileOpenInsteadOfFailing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var changes []string
		failing := atomic.Bool{}
		failing.Store(true)
		calls := atomic.Int32{}
		h := middleware.Breaker(middleware.BreakerConfig{
			Name:                "orders",
			ConsecutiveFailures: 3,
			OpenTimeout:         10 * time.Second,
			Observer: observer{breaker: func(i middleware.BreakerInfo) {
				mu.Lock()
				changes = append(changes, i.Name+":"+i.From.String()+">"+i.To.String())
				mu.Unlock()
			}},
		})(func(*message.Message) ([]*message.Message, error) {
			calls.Add(1)
			if failing.Load() {
				return nil, errTransient
			}
			return nil, nil
		})
		for range 3 {
			if _, err := h(newMsg("m", "")); !errors.Is(err, errTransient) {
				t.Fatalf("err %v", err)
			}
		}
		// Open: the next message is held, not failed.
		failing.Store(false)
		start := time.Now()
		var err error
		done := make(chan struct{})
		go func() { _, err = h(newMsg("m", "")); close(done) }()
		synctest.Wait()
		select {
		case <-done:
			t.Fatalf("message not held while open: %v", err)
		default:
		}
		if calls.Load() != 3 {
			t.Errorf("handler ran while open")
		}
		<-done
		if err != nil {
			t.Fatalf("probe: %v", err)
		}
		if took := time.Since(start); took < 10*time.Second || took > 10*time.Second+10*time.Millisecond {
			t.Errorf("held %v, want about the open timeout (10s)", took)
		}
		want := []string{"orders:closed>open", "orders:open>half-open", "orders:half-open>closed"}
		mu.Lock()
		defer mu.Unlock()
		if len(changes) != len(want) {
			t.Fatalf("changes %v, want %v", changes, want)
		}
		for i := range want {
			if changes[i] != want[i] {
				t.Errorf("changes %v, want %v", changes, want)
			}
		}
	})
}

func TestBreakerWaitersRunAfterProbe(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		failing := atomic.Bool{}
		failing.Store(true)
		probeGate := make(chan struct{})
		var running, maxRunning atomic.Int32
		first := atomic.Bool{}
		h := middleware.Breaker(middleware.BreakerConfig{ConsecutiveFailures: 1, OpenTimeout: time.Second})(
			func(*message.Message) ([]*message.Message, error) {
				if failing.Load() {
					return nil, errTransient
				}
				n := running.Add(1)
				defer running.Add(-1)
				if n > maxRunning.Load() {
					maxRunning.Store(n)
				}
				if first.CompareAndSwap(false, true) {
					<-probeGate // the half-open probe takes a while
				}
				return nil, nil
			})
		_, _ = h(newMsg("m", "")) // opens
		failing.Store(false)
		var wg sync.WaitGroup
		errs := make([]error, 5)
		for i := range 5 {
			wg.Go(func() { _, errs[i] = h(newMsg("m", "")) })
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if running.Load() != 1 {
			t.Errorf("%d running while half-open, want the probe only", running.Load())
		}
		close(probeGate)
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
	})
}

func TestBreakerIgnoresPermanentAndCancelled(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	var changes atomic.Int32
	var next error
	h := middleware.Breaker(middleware.BreakerConfig{
		ConsecutiveFailures: 1,
		Observer:            observer{breaker: func(middleware.BreakerInfo) { changes.Add(1) }},
	})(func(*message.Message) ([]*message.Message, error) { return nil, next })
	for _, err := range []error{middleware.Permanent(errTransient), context.Canceled, middleware.ErrInProgress} {
		next = err
		msg := newMsg("m", "")
		if errors.Is(err, context.Canceled) {
			msg.SetContext(cancelled)
		}
		if _, got := h(msg); !errors.Is(got, err) {
			t.Errorf("got %v, want %v", got, err)
		}
	}
	if changes.Load() != 0 {
		t.Errorf("breaker changed state %d times", changes.Load())
	}
}

func TestBreakerWaitEndsOnShutdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := middleware.Breaker(middleware.BreakerConfig{ConsecutiveFailures: 1, OpenTimeout: time.Hour})(
			func(*message.Message) ([]*message.Message, error) { return nil, errTransient })
		_, _ = h(newMsg("m", "")) // opens
		ctx, cancel := context.WithCancel(context.Background())
		msg := newMsg("m", "")
		msg.SetContext(ctx)
		time.AfterFunc(time.Second, cancel)
		start := time.Now()
		_, err := h(msg)
		if !errors.Is(err, context.Canceled) || time.Since(start) != time.Second {
			t.Errorf("err %v after %v; want context.Canceled after 1s", err, time.Since(start))
		}
	})
}

// A graceful shutdown (Stopping closed) ends the wait of a message the
// open breaker holds, with a redelivery error, without waiting for the open
// period; a message that comes to the open breaker after that is not held.
func TestBreakerWaitEndsWhenStopping(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		stopping := make(chan struct{})
		ran := atomic.Int32{}
		h := middleware.Breaker(middleware.BreakerConfig{ConsecutiveFailures: 1, OpenTimeout: time.Hour, Stopping: stopping})(
			func(*message.Message) ([]*message.Message, error) { ran.Add(1); return nil, errTransient })
		_, _ = h(newMsg("m", "")) // opens
		time.AfterFunc(time.Second, func() { close(stopping) })
		start := time.Now()
		_, err := h(newMsg("m", ""))
		if !middleware.IsRedelivery(err) || errors.Is(err, context.Canceled) || time.Since(start) != time.Second {
			t.Errorf("err %v after %v; want a redelivery error after 1s", err, time.Since(start))
		}
		start = time.Now()
		if _, err := h(newMsg("m", "")); !middleware.IsRedelivery(err) || time.Since(start) != 0 {
			t.Errorf("after stopping: err %v after %v; want a redelivery error at once", err, time.Since(start))
		}
		if ran.Load() != 1 {
			t.Errorf("the handler ran %d times, want 1 (the failure that opened the breaker)", ran.Load())
		}
	})
}

// The breaker trips on consecutive failures only: a success between
// failures resets the count, whether it took the closed fast path or not.
func TestBreakerTripsOnConsecutiveFailuresOnly(t *testing.T) {
	var opened atomic.Int32
	var fail atomic.Bool
	h := middleware.Breaker(middleware.BreakerConfig{
		ConsecutiveFailures: 3,
		OpenTimeout:         time.Hour,
		Observer: observer{breaker: func(i middleware.BreakerInfo) {
			if i.To == middleware.BreakerOpen {
				opened.Add(1)
			}
		}},
	})(func(*message.Message) ([]*message.Message, error) {
		if fail.Load() {
			return nil, errTransient
		}
		return nil, nil
	})
	run := func(failing bool) {
		t.Helper()
		fail.Store(failing)
		_, err := h(newMsg("m", ""))
		if failing != (err != nil) {
			t.Fatalf("failing=%v, err=%v", failing, err)
		}
	}
	for range 5 {
		run(true)
		run(true)
		run(false)
		run(false)
	}
	if n := opened.Load(); n != 0 {
		t.Fatalf("opened %d times after runs of 2 failures, want 0", n)
	}
	run(true)
	run(true)
	run(true)
	if n := opened.Load(); n != 1 {
		t.Fatalf("opened %d times after 3 consecutive failures, want 1", n)
	}
}
