package middleware_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/middleware"
)

func TestRetrySucceedsAfterTransientFailures(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var attempts []int
		var starts []time.Time
		var infos []middleware.RetryInfo
		h := middleware.Retry(middleware.RetryConfig{
			InitialInterval: 100 * time.Millisecond,
			Observer:        observer{retried: func(i middleware.RetryInfo) { infos = append(infos, i) }},
		})(func(m *message.Message) ([]*message.Message, error) {
			attempts = append(attempts, middleware.AttemptFromContext(m.Context()))
			starts = append(starts, time.Now())
			if len(attempts) < 3 {
				return nil, errTransient
			}
			return []*message.Message{message.NewMessage("out", nil)}, nil
		})
		out, err := h(newMsg("r1", ""))
		if err != nil || len(out) != 1 {
			t.Fatalf("got %v, %v; want one message, nil", out, err)
		}
		if want := []int{1, 2, 3}; !equalInts(attempts, want) {
			t.Errorf("attempts %v, want %v", attempts, want)
		}
		// Jitter 0.5 around 100ms, then around 200ms.
		for i, r := range [][2]time.Duration{{50 * time.Millisecond, 150 * time.Millisecond}, {100 * time.Millisecond, 300 * time.Millisecond}} {
			gap := starts[i+1].Sub(starts[i])
			if gap < r[0] || gap > r[1] {
				t.Errorf("gap %d = %v, want in [%v, %v]", i+1, gap, r[0], r[1])
			}
			if infos[i].Delay != gap || infos[i].Attempt != i+1 || !errors.Is(infos[i].Err, errTransient) {
				t.Errorf("Retried %d = %+v, gap %v", i, infos[i], gap)
			}
		}
	})
}

func TestRetryZeroConfigRetriesFiveTimes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		calls := 0
		h := middleware.Retry(middleware.RetryConfig{})(func(*message.Message) ([]*message.Message, error) {
			calls++
			return nil, errTransient
		})
		_, err := h(newMsg("r2", ""))
		var re *middleware.RetryError
		if !errors.As(err, &re) || re.Attempts != 5 || calls != 5 {
			t.Fatalf("calls %d, err %v; want 5 attempts and a RetryError", calls, err)
		}
		if !errors.Is(err, errTransient) {
			t.Errorf("RetryError does not wrap the last error")
		}
		if got := middleware.ErrorType(err); got != middleware.ReasonRetriesExhausted {
			t.Errorf("ErrorType = %q, want %q", got, middleware.ReasonRetriesExhausted)
		}
		if !re.LastFailure.After(re.FirstFailure) {
			t.Errorf("first %v, last %v", re.FirstFailure, re.LastFailure)
		}
	})
}

func TestRetryPermanentIsNotRetried(t *testing.T) {
	calls := 0
	h := middleware.Retry(middleware.RetryConfig{})(func(*message.Message) ([]*message.Message, error) {
		calls++
		return nil, middleware.Permanent(errors.New("bad input"))
	})
	_, err := h(newMsg("r3", ""))
	if calls != 1 || !middleware.IsPermanent(err) {
		t.Fatalf("calls %d, err %v; want 1 call, permanent error", calls, err)
	}
	if got := middleware.ErrorType(err); got != middleware.ReasonPermanent {
		t.Errorf("ErrorType = %q, want %q", got, middleware.ReasonPermanent)
	}
}

func TestRetryStopsAtOnceWhenContextCancelled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		msg := newMsg("r4", "")
		msg.SetContext(ctx)
		calls := 0
		h := middleware.Retry(middleware.RetryConfig{InitialInterval: time.Hour, MaxElapsedTime: -1})(
			func(*message.Message) ([]*message.Message, error) {
				calls++
				return nil, errTransient
			})
		go func() {
			time.Sleep(time.Second)
			cancel()
		}()
		start := time.Now()
		_, err := h(msg)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		var re *middleware.RetryError
		if errors.As(err, &re) {
			t.Errorf("cancellation wrapped in RetryError: %v", err)
		}
		if took := time.Since(start); took != time.Second || calls != 1 {
			t.Errorf("took %v with %d calls, want 1s and 1 call", took, calls)
		}
	})
}

func TestRetryMaxElapsedTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		calls := 0
		h := middleware.Retry(middleware.RetryConfig{
			MaxAttempts: 100, InitialInterval: time.Second, Multiplier: 1, RandomizationFactor: -1,
			MaxElapsedTime: 3500 * time.Millisecond,
		})(func(*message.Message) ([]*message.Message, error) {
			calls++
			return nil, errTransient
		})
		start := time.Now()
		_, err := h(newMsg("r5", ""))
		if err == nil || calls != 4 || time.Since(start) != 3*time.Second {
			t.Fatalf("calls %d in %v, err %v; want 4 calls in 3s", calls, time.Since(start), err)
		}
	})
}

// A Timeout inside Retry must not poison later attempts: each gets a fresh
// context with a fresh deadline (Watermill #467).
func TestRetryGivesEachAttemptAFreshContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		calls := 0
		h := middleware.Retry(middleware.RetryConfig{})(middleware.Timeout(time.Second)(
			func(m *message.Message) ([]*message.Message, error) {
				calls++
				if calls == 1 {
					<-m.Context().Done() // hangs until the attempt times out
					return nil, m.Context().Err()
				}
				return nil, m.Context().Err()
			}))
		msg := newMsg("r6", "")
		orig := msg.Context()
		if _, err := h(msg); err != nil || calls != 2 {
			t.Fatalf("calls %d, err %v; want success on attempt 2", calls, err)
		}
		if msg.Context() != orig {
			t.Error("message context not restored")
		}
	})
}

func TestRetryInvalidConfigPanics(t *testing.T) {
	for name, cfg := range map[string]middleware.RetryConfig{
		"negative attempts": {MaxAttempts: -1},
		"multiplier < 1":    {Multiplier: 0.5},
		"jitter > 1":        {RandomizationFactor: 2},
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if r := recover(); r == nil {
					t.Error("no panic")
				}
			}()
			middleware.Retry(cfg)
		})
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
