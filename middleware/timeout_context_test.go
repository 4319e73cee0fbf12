package middleware_test

import (
	"context"
	"errors"
	"math"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/middleware"
)

type ctxKey struct{}

// runAttempt runs f as a handler under Timeout(d) on a message whose
// context is parent, and returns the attempt's context.
func runAttempt(t *testing.T, parent context.Context, d time.Duration, f func(ctx context.Context)) context.Context {
	t.Helper()
	var got context.Context
	h := middleware.Timeout(d)(func(m *message.Message) ([]*message.Message, error) {
		got = m.Context()
		f(got)
		return nil, nil
	})
	msg := message.NewMessage("m", nil)
	msg.SetContext(parent)
	if _, err := h(msg); err != nil {
		t.Fatal(err)
	}
	if msg.Context() != parent {
		t.Error("context not restored")
	}
	return got
}

func TestTimeoutContextDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		parent := context.WithValue(context.Background(), ctxKey{}, "v")
		ctx := runAttempt(t, parent, time.Second, func(ctx context.Context) {
			if ctx.Value(ctxKey{}) != "v" {
				t.Error("value not passed through")
			}
			if d, ok := ctx.Deadline(); !ok || !d.Equal(time.Now().Add(time.Second)) {
				t.Errorf("Deadline = %v, %v", d, ok)
			}
			if err := ctx.Err(); err != nil {
				t.Errorf("Err before the deadline = %v", err)
			}
			time.Sleep(time.Second) // never asks for Done
			synctest.Wait()         // the deadline's timer has fired
			if err := ctx.Err(); err != context.DeadlineExceeded {
				t.Errorf("Err after the deadline = %v", err)
			}
			if err := context.Cause(ctx); err != context.DeadlineExceeded {
				t.Errorf("Cause = %v", err)
			}
			select {
			case <-ctx.Done():
			default:
				t.Error("Done not closed after Err reported the deadline")
			}
		})
		if err := ctx.Err(); err != context.DeadlineExceeded {
			t.Errorf("Err after the attempt = %v, want the deadline it ended with", err)
		}
	})
}

func TestTimeoutContextDoneAndDerived(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		runAttempt(t, context.Background(), time.Second, func(ctx context.Context) {
			child, cancel := context.WithCancel(ctx)
			defer cancel()
			fired := make(chan struct{})
			context.AfterFunc(ctx, func() { close(fired) })
			stopped := context.AfterFunc(ctx, func() { t.Error("stopped AfterFunc ran") })
			if !stopped() {
				t.Error("stop = false before the context ended")
			}
			<-ctx.Done()
			if time.Since(start) != time.Second || ctx.Err() != context.DeadlineExceeded {
				t.Errorf("Done after %v with %v", time.Since(start), ctx.Err())
			}
			<-child.Done()
			<-fired
			if !errors.Is(child.Err(), context.DeadlineExceeded) {
				t.Errorf("derived context: %v", child.Err())
			}
		})
	})
}

func TestTimeoutContextEndsWithAttempt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var child context.Context
		ctx := runAttempt(t, context.Background(), time.Hour, func(ctx context.Context) {
			var cancel context.CancelFunc
			child, cancel = context.WithCancel(ctx)
			_ = cancel // ended by the attempt's end
		})
		<-ctx.Done()
		<-child.Done()
		if ctx.Err() != context.Canceled || child.Err() != context.Canceled {
			t.Errorf("after the attempt: %v, derived %v", ctx.Err(), child.Err())
		}
		// The attempt's timer was stopped: nothing is left running.
		synctest.Wait()
	})
	// A context whose Done nobody asked for ends too.
	ctx := runAttempt(t, context.Background(), time.Hour, func(context.Context) {})
	if ctx.Err() != context.Canceled {
		t.Errorf("Err = %v", ctx.Err())
	}
	<-ctx.Done()
}

func TestTimeoutContextParentCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		parent, cancel := context.WithCancelCause(context.Background())
		cause := errors.New("shutdown")
		runAttempt(t, parent, time.Hour, func(ctx context.Context) {
			lazy := ctx.Err()
			done := ctx.Done()
			cancel(cause)
			<-done
			if lazy != nil || ctx.Err() != context.Canceled || context.Cause(ctx) != cause {
				t.Errorf("Err before %v, after %v, cause %v", lazy, ctx.Err(), context.Cause(ctx))
			}
		})
		// Cancelled before Done was asked for: Err sees it, Done is closed.
		parent, cancel = context.WithCancelCause(context.Background())
		runAttempt(t, parent, time.Hour, func(ctx context.Context) {
			cancel(cause)
			if ctx.Err() != context.Canceled {
				t.Errorf("Err = %v", ctx.Err())
			}
			<-ctx.Done()
		})
		// The parent's earlier deadline wins.
		pctx, pcancel := context.WithTimeout(context.Background(), time.Minute)
		defer pcancel()
		runAttempt(t, pctx, time.Hour, func(ctx context.Context) {
			if d, _ := ctx.Deadline(); !d.Equal(time.Now().Add(time.Minute)) {
				t.Errorf("Deadline = %v", d)
			}
		})
	})
}

// A timeout too long to add to the clock ("for ever", math.MaxInt64) is a
// deadline at the end of time, not one in the past.
func TestTimeoutForEver(t *testing.T) {
	runAttempt(t, context.Background(), math.MaxInt64, func(ctx context.Context) {
		if err := ctx.Err(); err != nil {
			t.Errorf("Err = %v", err)
		}
		if d, ok := ctx.Deadline(); !ok || time.Until(d) < 100*365*24*time.Hour {
			t.Errorf("Deadline = %v, %v: not in the far future", d, ok)
		}
		d1, _ := ctx.Deadline()
		d2, _ := ctx.Deadline()
		if d1 != d2 {
			t.Errorf("Deadline changed between calls: %v, %v", d1, d2)
		}
		select {
		case <-ctx.Done():
			t.Error("Done closed")
		default:
		}
	})
}
