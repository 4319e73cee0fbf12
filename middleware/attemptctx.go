package middleware

import (
	"context"
	"sync"
	"time"
)

// attemptCtx is the context [Timeout] gives one attempt: the parent's
// values and cancellation plus a deadline, like context.WithTimeout, but
// lazy. It arms no timer and registers nothing with its parent until
// someone asks for Done (or derives a cancellable context from it), so an
// attempt whose handler never waits on its context costs one allocation
// and no timer, instead of a timer, a cancel context and an entry in the
// parent's children (a measured third of the default stack's cost on a
// router with a no-op handler). Err and Deadline answer without arming:
// Err compares the clock with the deadline itself, and once it reports an
// error the context is cancelled, so Done (when armed) is closed too.
//
// It implements AfterFunc, so that contexts derived from it with the
// context package are cancelled without a goroutine each.
type attemptCtx struct {
	parent   context.Context
	deadline int64 // monoNow() at which the attempt's time is up

	mu     sync.Mutex
	err    error         // set once: Canceled (attempt over), DeadlineExceeded, or the parent's error
	done   chan struct{} // nil until Done; closed when err is set
	timer  *time.Timer   // armed by Done
	stop   func() bool   // unregisters from the parent, armed by Done
	afters map[*afterFunc]struct{}
}

type afterFunc struct{ f func() }

func newAttemptCtx(parent context.Context, d time.Duration) *attemptCtx {
	c := new(attemptCtx)
	c.init(parent, monoNow(), d)
	return c
}

// init sets up a zero attemptCtx for an attempt that starts at now
// (monoNow). The deadline is kept on the monotonic clock: a time.Time would
// cost a wall clock read on every attempt too, and the attempt's deadline
// is rarely asked for.
func (c *attemptCtx) init(parent context.Context, now int64, d time.Duration) {
	c.parent, c.deadline = parent, monoAfter(now, d)
}

// left returns the time left until the attempt's deadline.
func (c *attemptCtx) left() time.Duration { return time.Duration(c.deadline - monoNow()) }

// Deadline returns the earlier of the attempt's deadline and the parent's,
// the same on every call.
func (c *attemptCtx) Deadline() (time.Time, bool) {
	dl := monoEpoch.Add(time.Duration(c.deadline))
	if d, ok := c.parent.Deadline(); ok && d.Before(dl) {
		return d, true
	}
	return dl, true
}

// Value defers to the parent.
func (c *attemptCtx) Value(key any) any { return c.parent.Value(key) }

// Err returns nil while the attempt runs, within its deadline, under a
// live parent; then the reason it ended.
func (c *attemptCtx) Err() error {
	c.mu.Lock()
	err := c.err
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if perr := c.parent.Err(); perr != nil {
		return c.cancel(perr)
	}
	if c.left() <= 0 {
		return c.cancel(context.DeadlineExceeded)
	}
	return nil
}

// Done returns a channel closed when the attempt ends, its deadline
// passes or the parent is done. The first call arms a timer and a parent
// callback.
func (c *attemptCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done != nil {
		return c.done
	}
	c.done = make(chan struct{})
	if c.err == nil {
		if perr := c.parent.Err(); perr != nil {
			c.err = perr
		} else if d := c.left(); d <= 0 {
			c.err = context.DeadlineExceeded
		} else {
			// Both callbacks run on goroutines of their own and take mu:
			// arming under mu cannot deadlock.
			c.timer = time.AfterFunc(d, func() { c.cancel(context.DeadlineExceeded) })
			c.stop = context.AfterFunc(c.parent, func() { c.cancel(c.parent.Err()) })
			return c.done
		}
	}
	close(c.done)
	return c.done
}

// AfterFunc runs f on a goroutine of its own once c is done, like
// context.AfterFunc; the context package uses it to cancel contexts
// derived from c. stop reports whether it kept f from running.
func (c *attemptCtx) AfterFunc(f func()) (stop func() bool) {
	c.Done() // arm
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		go f()
		return func() bool { return false }
	}
	a := &afterFunc{f: f}
	if c.afters == nil {
		c.afters = make(map[*afterFunc]struct{})
	}
	c.afters[a] = struct{}{}
	c.mu.Unlock()
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if _, ok := c.afters[a]; ok {
			delete(c.afters, a)
			return true
		}
		return false
	}
}

// cancel ends the context with err unless it already ended, and returns
// the error it ended with.
func (c *attemptCtx) cancel(err error) error {
	c.mu.Lock()
	if c.err != nil {
		err = c.err
		c.mu.Unlock()
		return err
	}
	c.err = err
	if c.done != nil {
		close(c.done)
	}
	timer, stop, afters := c.timer, c.stop, c.afters
	c.timer, c.stop, c.afters = nil, nil, nil
	c.mu.Unlock()
	if timer != nil {
		timer.Stop()
	}
	if stop != nil {
		stop()
	}
	for a := range afters {
		go a.f()
	}
	return err
}

// String describes the context like the context package does.
func (c *attemptCtx) String() string {
	return "middleware.Timeout(" + c.left().String() + ")"
}
