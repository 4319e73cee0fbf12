package middleware

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/cenkalti/backoff/v5"
)

// RetryConfig configures [Retry]. Zero fields mean the documented defaults.
type RetryConfig struct {
	// MaxAttempts is the total number of attempts, the first included.
	// Zero means 5. 1 means no retries. Negative values panic.
	MaxAttempts int
	// InitialInterval is the mean wait before the first retry.
	// Zero means 100ms.
	InitialInterval time.Duration
	// MaxInterval caps the mean wait between attempts. Zero means 10s.
	MaxInterval time.Duration
	// Multiplier grows the mean wait after each retry. Zero means 2;
	// values below 1 panic.
	Multiplier float64
	// RandomizationFactor is the jitter: each wait is drawn from
	// [mean*(1-f), mean*(1+f)]. Zero means 0.5; use a negative value for
	// no jitter. Values above 1 panic.
	RandomizationFactor float64
	// MaxElapsedTime bounds the whole retry sequence: no retry starts when
	// its wait would end later than this after the first attempt began.
	// Zero means 1 minute; negative means no time bound.
	MaxElapsedTime time.Duration
	// Observer, when set, is told of each retry (Retried, before its
	// wait). Nil means none.
	Observer Observer
}

// RetryInfo describes one retry for [Observer].Retried.
type RetryInfo struct {
	// Message is the message being handled.
	Message *message.Message
	// Attempt is the number of the attempt that just failed (1-based).
	Attempt int
	// Err is that attempt's error.
	Err error
	// Delay is the wait before the next attempt.
	Delay time.Duration
}

// Defaults of [RetryConfig].
const (
	DefaultRetryMaxAttempts     = 5
	DefaultRetryInitialInterval = 100 * time.Millisecond
	DefaultRetryMaxInterval     = 10 * time.Second
	DefaultRetryMultiplier      = 2.0
	DefaultRetryRandomization   = 0.5
	DefaultRetryMaxElapsedTime  = time.Minute
)

func (c RetryConfig) withDefaults() RetryConfig {
	if c.MaxAttempts < 0 {
		panic(fmt.Sprintf("middleware: RetryConfig.MaxAttempts must not be negative, got %d", c.MaxAttempts))
	}
	if c.InitialInterval < 0 || c.MaxInterval < 0 {
		panic("middleware: RetryConfig intervals must not be negative")
	}
	if c.Multiplier != 0 && c.Multiplier < 1 {
		panic(fmt.Sprintf("middleware: RetryConfig.Multiplier must be >= 1, got %v", c.Multiplier))
	}
	if c.RandomizationFactor > 1 {
		panic(fmt.Sprintf("middleware: RetryConfig.RandomizationFactor must be <= 1, got %v", c.RandomizationFactor))
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultRetryMaxAttempts
	}
	if c.InitialInterval == 0 {
		c.InitialInterval = DefaultRetryInitialInterval
	}
	if c.MaxInterval == 0 {
		c.MaxInterval = DefaultRetryMaxInterval
	}
	if c.MaxInterval < c.InitialInterval {
		c.MaxInterval = c.InitialInterval
	}
	if c.Multiplier == 0 {
		c.Multiplier = DefaultRetryMultiplier
	}
	switch {
	case c.RandomizationFactor == 0:
		c.RandomizationFactor = DefaultRetryRandomization
	case c.RandomizationFactor < 0:
		c.RandomizationFactor = 0
	}
	if c.MaxElapsedTime == 0 {
		c.MaxElapsedTime = DefaultRetryMaxElapsedTime
	}
	return c
}

// Retry returns a middleware that re-runs the handler in process after a
// transient error, waiting an exponentially growing, jittered interval
// (cenkalti/backoff/v5) between attempts, within MaxAttempts and
// MaxElapsedTime.
//
//   - A permanent error ([IsPermanent]: made by [Permanent], or a schema
//     error) is returned at once, without retries.
//   - A redelivery error ([IsRedelivery]: a concurrent duplicate, a failed
//     dedup store) is retried like a transient error.
//   - When the message's context is cancelled (shutdown), Retry stops at
//     once, also in the middle of a wait, and returns an error for which
//     errors.Is(err, context.Canceled) holds; it is never wrapped in
//     [RetryError], and [DeadLetter] never dead-letters it.
//   - Attempt 2 and later run on a fresh child of the message's original
//     context carrying the attempt number ([AttemptFromContext]); a
//     [Timeout] inside Retry therefore bounds each attempt on its own.
//   - When it gives up, Retry returns a [*RetryError] wrapping the last
//     error with the attempt count and the first and last failure times;
//     the messages the failed attempt returned are dropped.
//
// Retry sleeps on the handler goroutine, holding the message unacked; that
// pauses consumption of its partition or queue while it waits. No backoff
// state or timer is created until the first failure.
func Retry(cfg RetryConfig) message.HandlerMiddleware {
	cfg = cfg.withDefaults()
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			out, err := h(msg)
			if err == nil {
				return out, nil
			}
			return retryAfterFailure(&cfg, h, msg, err)
		}
	}
}

func retryAfterFailure(cfg *RetryConfig, h message.HandlerFunc, msg *message.Message, err error) ([]*message.Message, error) {
	orig := msg.Context()
	first := time.Now()
	last := first
	if cerr := orig.Err(); cerr != nil {
		return nil, cancelled(cerr, err)
	}
	if IsPermanent(err) || cfg.MaxAttempts == 1 {
		return nil, &RetryError{Err: err, Attempts: 1, FirstFailure: first, LastFailure: last}
	}
	b := &backoff.ExponentialBackOff{
		InitialInterval:     cfg.InitialInterval,
		RandomizationFactor: cfg.RandomizationFactor,
		Multiplier:          cfg.Multiplier,
		MaxInterval:         cfg.MaxInterval,
	}
	b.Reset()
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	attempt := 1
	for attempt < cfg.MaxAttempts {
		delay := b.NextBackOff()
		if cfg.MaxElapsedTime > 0 && time.Since(first)+delay > cfg.MaxElapsedTime {
			break
		}
		if cfg.Observer != nil {
			cfg.Observer.Retried(RetryInfo{Message: msg, Attempt: attempt, Err: err, Delay: delay})
		}
		if timer == nil {
			timer = time.NewTimer(delay)
		} else {
			timer.Reset(delay)
		}
		select {
		case <-orig.Done():
			return nil, cancelled(orig.Err(), err)
		case <-timer.C:
		}
		attempt++
		msg.SetContext(context.WithValue(orig, attemptKey{}, attempt))
		var out []*message.Message
		out, err = h(msg)
		msg.SetContext(orig)
		if err == nil {
			return out, nil
		}
		last = time.Now()
		if cerr := orig.Err(); cerr != nil {
			return nil, cancelled(cerr, err)
		}
		if IsPermanent(err) {
			break
		}
	}
	return nil, &RetryError{Err: err, Attempts: attempt, FirstFailure: first, LastFailure: last}
}

// cancelled returns an error recognisable as the context error cerr that
// keeps the handler's last error in its text.
func cancelled(cerr, last error) error {
	if errors.Is(last, cerr) {
		return last
	}
	return fmt.Errorf("%w (last error: %w)", cerr, last)
}
