package middleware

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/sony/gobreaker/v2"
)

// BreakerConfig configures [Breaker]. Zero fields mean the defaults.
type BreakerConfig struct {
	// Name names the breaker in [BreakerInfo] (the handler name is a good
	// choice). Zero means "".
	Name string
	// ConsecutiveFailures is the number of consecutive transient failures
	// that opens the breaker. Zero means 5.
	ConsecutiveFailures int
	// OpenTimeout is how long the breaker stays open before it lets a probe
	// through (half-open). Zero means 30s.
	OpenTimeout time.Duration
	// HalfOpenProbes is how many messages may run while half-open; that
	// many consecutive successes close the breaker, one failure reopens it.
	// Zero means 1.
	HalfOpenProbes int
	// Interval, when positive, clears the failure counts every Interval
	// while the breaker is closed. Zero means counts are cleared only by a
	// success.
	Interval time.Duration
	// Observer, when set, is told of every state change (BreakerChanged).
	// It is called with the breaker's lock held: it must not block and
	// must not call back into the stack. Nil means none.
	Observer Observer
	// Stopping, when closed, ends the wait of every message the open
	// breaker holds, and of every message it would hold from then on: a
	// graceful shutdown began (see StackConfig.Stopping). Nil means never.
	Stopping <-chan struct{}
}

// BreakerState is the state of a circuit breaker.
type BreakerState int

// Breaker states.
const (
	BreakerClosed BreakerState = iota
	BreakerHalfOpen
	BreakerOpen
)

// String returns "closed", "half-open" or "open".
func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerHalfOpen:
		return "half-open"
	case BreakerOpen:
		return "open"
	}
	return fmt.Sprintf("BreakerState(%d)", int(s))
}

// BreakerInfo describes a breaker state change for
// [Observer].BreakerChanged.
type BreakerInfo struct {
	// Name is BreakerConfig.Name.
	Name string
	// From and To are the old and the new state.
	From, To BreakerState
}

// Defaults of [BreakerConfig].
const (
	DefaultBreakerConsecutiveFailures = 5
	DefaultBreakerOpenTimeout         = 30 * time.Second
)

// Breaker returns a circuit-breaker middleware (sony/gobreaker/v2 state
// machine). Each handler it wraps gets its own breaker.
//
// Only transient errors count as failures: a nil error and a permanent
// error ([IsPermanent]; the dependency answered, the input was bad) count as
// successes, and context cancellation and redelivery errors ([IsRedelivery])
// are not counted at all.
//
// When the breaker is open, Breaker does not fail the message (that would
// burn every message into the dead-letter topic, or make the broker spin on
// redeliveries): it pauses. It holds the message, unacked, until the breaker
// lets a half-open probe through, then runs it. Subscribers deliver the next
// message only after the current one is acked, so holding it pauses
// consumption. Messages that arrive while a probe runs wait for its outcome:
// success closes the breaker and they run; failure reopens it and they wait
// again. A wait ends when the message's context is cancelled, and the
// context error is returned (the message is nacked, never dead-lettered);
// it also ends when BreakerConfig.Stopping is closed (a graceful shutdown
// began), with an error that wraps gobreaker.ErrOpenState ([IsRedelivery]):
// the message is nacked (a durable broker delivers it again later), and the
// shutdown does not wait for the open period to end.
//
// Place it outside [Retry] so that a message that failed all its attempts
// counts as one failure. While closed with no failure counted, a message
// costs one atomic load; concurrent handlers may then see a success that
// raced a failure not reset the failure count, which can only make the
// breaker trip sooner.
func Breaker(cfg BreakerConfig) message.HandlerMiddleware {
	cfg = cfg.withDefaults()
	return func(h message.HandlerFunc) message.HandlerFunc {
		b := newBreaker(cfg)
		return func(msg *message.Message) ([]*message.Message, error) {
			if !b.clean.Load() {
				return b.slow(h, msg)
			}
			out, err := h(msg)
			if err != nil {
				b.cleanFailed(err)
			}
			return out, err
		}
	}
}

func (cfg BreakerConfig) withDefaults() BreakerConfig {
	if cfg.ConsecutiveFailures < 0 || cfg.OpenTimeout < 0 || cfg.HalfOpenProbes < 0 || cfg.Interval < 0 {
		panic(fmt.Sprintf("middleware: BreakerConfig values must not be negative: %+v", cfg))
	}
	if cfg.ConsecutiveFailures == 0 {
		cfg.ConsecutiveFailures = DefaultBreakerConsecutiveFailures
	}
	if cfg.OpenTimeout == 0 {
		cfg.OpenTimeout = DefaultBreakerOpenTimeout
	}
	if cfg.HalfOpenProbes == 0 {
		cfg.HalfOpenProbes = 1
	}
	return cfg
}

type breaker struct {
	cb      *gobreaker.CircuitBreaker[[]*message.Message]
	timeout time.Duration
	waiters atomic.Int32
	// clean is true while the breaker is closed and the last outcome it
	// recorded was a success, so it counts no consecutive failures. Another
	// success then changes nothing the breaker decides on (it trips on
	// consecutive failures), and run skips gobreaker's two mutex sections
	// and clock reads. Failures always go to gobreaker.
	clean atomic.Bool

	stopping <-chan struct{} // BreakerConfig.Stopping

	mu       sync.Mutex
	openedAt time.Time     // when the breaker last opened
	wake     chan struct{} // closed and replaced when waiters should look again
}

func newBreaker(cfg BreakerConfig) *breaker {
	b := &breaker{timeout: cfg.OpenTimeout, stopping: cfg.Stopping, wake: make(chan struct{})}
	trip := uint32(cfg.ConsecutiveFailures)
	b.cb = gobreaker.NewCircuitBreaker[[]*message.Message](gobreaker.Settings{
		Name:        cfg.Name,
		MaxRequests: uint32(cfg.HalfOpenProbes),
		Interval:    cfg.Interval,
		Timeout:     cfg.OpenTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= trip },
		IsSuccessful: func(err error) bool {
			return err == nil || IsPermanent(err)
		},
		IsExcluded: func(err error) bool {
			return errors.Is(err, context.Canceled) || IsRedelivery(err)
		},
		OnStateChange: func(name string, from, to gobreaker.State) {
			if to != gobreaker.StateClosed {
				b.clean.Store(false)
			}
			if to == gobreaker.StateOpen {
				b.mu.Lock()
				b.openedAt = time.Now()
				b.mu.Unlock()
			}
			if cfg.Observer != nil {
				cfg.Observer.BreakerChanged(BreakerInfo{Name: name, From: breakerState(from), To: breakerState(to)})
			}
		},
	})
	b.clean.Store(true)
	return b
}

func breakerState(s gobreaker.State) BreakerState {
	switch s {
	case gobreaker.StateOpen:
		return BreakerOpen
	case gobreaker.StateHalfOpen:
		return BreakerHalfOpen
	}
	return BreakerClosed
}

// cleanFailed records err, returned by a message run on the fast path
// (the breaker clean), as gobreaker would have: a failure, unless it is a
// success or an excluded error.
func (b *breaker) cleanFailed(err error) {
	if IsPermanent(err) || errors.Is(err, context.Canceled) || IsRedelivery(err) {
		return // a success (or an excluded error): nothing to record
	}
	// A failure: record it as gobreaker would have. Should the breaker
	// have opened meanwhile, Execute refuses and the failure is moot.
	b.clean.Store(false)
	b.cb.Execute(func() ([]*message.Message, error) { return nil, err })
}

// slow runs msg through gobreaker: the breaker is not clean.
func (b *breaker) slow(h message.HandlerFunc, msg *message.Message) ([]*message.Message, error) {
	if out, ran, err := b.try(h, msg); ran {
		if b.waiters.Load() > 0 {
			b.notify()
		}
		return out, err
	}
	return b.wait(h, msg)
}

// try runs msg through gobreaker and records the outcome when the breaker
// let it run (ran); else err is gobreaker's refusal.
func (b *breaker) try(h message.HandlerFunc, msg *message.Message) (out []*message.Message, ran bool, err error) {
	out, err = b.cb.Execute(func() ([]*message.Message, error) {
		ran = true
		return h(msg)
	})
	if ran {
		b.recorded(err)
	}
	return out, ran, err
}

// recorded notes a success gobreaker recorded while closed: consecutive
// failures are back to zero, so the fast path of run applies again.
func (b *breaker) recorded(err error) {
	if (err == nil || IsPermanent(err)) && b.cb.State() == gobreaker.StateClosed {
		b.clean.Store(true)
	}
}

// wait holds a rejected message until the breaker lets it through.
func (b *breaker) wait(h message.HandlerFunc, msg *message.Message) ([]*message.Message, error) {
	ctx := msg.Context()
	b.waiters.Add(1)
	defer b.waiters.Add(-1)
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		b.mu.Lock()
		wake := b.wake
		until := b.openedAt.Add(b.timeout + time.Millisecond)
		b.mu.Unlock()

		// Try again after taking the wake channel: an outcome reported
		// after this point closes it, so none is missed.
		out, ran, err := b.try(h, msg)
		if ran {
			b.notify()
			return out, err
		}

		// Open: wait until the open period ends. Half-open with its probes
		// taken: wait for an outcome, re-checking at least every
		// OpenTimeout.
		d := b.timeout
		if errors.Is(err, gobreaker.ErrOpenState) {
			d = max(time.Until(until), time.Millisecond)
		}
		if timer == nil {
			timer = time.NewTimer(d)
		} else {
			timer.Reset(d)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-b.stopping:
			return nil, errHeldAtStop
		case <-wake:
		case <-timer.C:
		}
	}
}

// errHeldAtStop is the error of a message the open breaker held when a
// graceful shutdown began: a redelivery error ([IsRedelivery]), so the
// message is nacked, not dead-lettered.
var errHeldAtStop = fmt.Errorf("middleware: shutting down while the open circuit breaker held the message: %w", gobreaker.ErrOpenState)

// notify wakes every waiting message so it looks at the breaker again.
func (b *breaker) notify() {
	b.mu.Lock()
	close(b.wake)
	b.wake = make(chan struct{})
	b.mu.Unlock()
}
