package middleware

import (
	"context"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"golang.org/x/time/rate"
)

// ThrottleConfig configures [Throttle]. The zero value throttles nothing.
type ThrottleConfig struct {
	// Rate is the sustained number of handler attempts per second allowed
	// (a token bucket, golang.org/x/time/rate). Zero means unlimited.
	Rate float64
	// Burst is the bucket size: how many attempts may start back to back
	// after an idle period. Zero means max(1, ceil(Rate/10)) — about 100ms
	// worth of tokens.
	Burst int
	// Concurrency caps how many attempts of the wrapped handler run at
	// once. Zero means unlimited.
	Concurrency int
	// Observer, when set, is told after an attempt had to wait for a token
	// or a concurrency slot (Throttled), not for attempts that started at
	// once. Nil means none.
	Observer Observer
}

// ThrottleInfo describes a throttle wait for [Observer].Throttled.
type ThrottleInfo struct {
	// Message is the message that waited.
	Message *message.Message
	// Limit is what it waited for: "rate" or "concurrency".
	Limit string
	// Waited is how long it waited.
	Waited time.Duration
}

// Throttle returns a middleware that limits the rate and the concurrency of
// handler attempts. Each handler the middleware wraps gets its own token
// bucket and semaphore, so router-level use limits every handler on its own.
//
// A waiting message is held on its handler goroutine, unacked: there is no
// buffer, and consumption of its partition or queue pauses. Waits end when
// the message's context is cancelled; the context error is returned (a
// redelivery, never dead-lettered). With Rate and Concurrency both zero the
// middleware is a no-op and costs nothing. Negative values panic.
func Throttle(cfg ThrottleConfig) message.HandlerMiddleware {
	if cfg.Rate < 0 || cfg.Burst < 0 || cfg.Concurrency < 0 {
		panic(fmt.Sprintf("middleware: ThrottleConfig values must not be negative: %+v", cfg))
	}
	if cfg.Rate == 0 && cfg.Concurrency == 0 {
		return func(h message.HandlerFunc) message.HandlerFunc { return h }
	}
	if cfg.Rate > 0 && cfg.Burst == 0 {
		cfg.Burst = max(1, int(cfg.Rate/10+0.999999))
	}
	return func(h message.HandlerFunc) message.HandlerFunc {
		var lim *rate.Limiter
		if cfg.Rate > 0 {
			lim = rate.NewLimiter(rate.Limit(cfg.Rate), cfg.Burst)
		}
		var sem chan struct{}
		if cfg.Concurrency > 0 {
			sem = make(chan struct{}, cfg.Concurrency)
		}
		return func(msg *message.Message) ([]*message.Message, error) {
			ctx := msg.Context()
			if sem != nil {
				select {
				case sem <- struct{}{}:
				default:
					start := time.Now()
					select {
					case sem <- struct{}{}:
					case <-ctx.Done():
						return nil, ctx.Err()
					}
					if cfg.Observer != nil {
						cfg.Observer.Throttled(ThrottleInfo{Message: msg, Limit: "concurrency", Waited: time.Since(start)})
					}
				}
				defer func() { <-sem }()
			}
			if lim != nil && !lim.Allow() {
				if err := waitToken(ctx, lim, msg, cfg.Observer); err != nil {
					return nil, err
				}
			}
			return h(msg)
		}
	}
}

func waitToken(ctx context.Context, lim *rate.Limiter, msg *message.Message, obs Observer) error {
	start := time.Now()
	if err := lim.Wait(ctx); err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		return fmt.Errorf("middleware: throttle: %w", err)
	}
	if obs != nil {
		obs.Throttled(ThrottleInfo{Message: msg, Limit: "rate", Waited: time.Since(start)})
	}
	return nil
}
