package middleware

import (
	"context"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// fused is what [Stack] builds for a handler when it can: the steps of the
// stack run in one function instead of one closure each, with the same
// outcome for every message as the composed chain ([Chain] of the steps'
// constructors), which [Stack] builds otherwise.
//
// Why: Watermill's router runs every message on a new goroutine, which
// starts with a small stack. Nine nested closures, each with its own frame,
// outgrew it, and the runtime then copied the goroutine's stack on every
// message (measured: about a fifth of the CPU time of the in-process bus with
// a no-op handler). Here a message that succeeds on its first attempt passes
// through one frame plus [Recover]'s; failures (retries, dead letters, nack
// delays) and an open or failing breaker leave through functions of their
// own, kept out of the hot frame, or through the composed steps themselves.
//
// It is used when the throttle step is off and the dedup step is off or uses
// a [MemoryStore]: the configurations whose success path is all in memory.
type fused struct {
	h message.HandlerFunc

	correlation bool
	nack        *nackDelay        // nil: step off
	dl          *DeadLetterConfig // nil: step off
	dd          *dedup            // nil: step off; else its store is a *MemoryStore
	br          *breaker          // nil: step off
	retry       *RetryConfig      // nil: step off
	timeout     time.Duration     // 0: step off
	recover     bool

	inner   message.HandlerFunc // timeout -> recover -> h, composed: a retry
	retried message.HandlerFunc // retry -> timeout -> recover -> h, composed: the breaker's slow path
}

// fusedCtxs are the contexts [fused.handle] gives a message, allocated
// together, and the state of the message that the steps after the
// handler need.
type fusedCtxs struct {
	handled handledCtx
	attempt attemptCtx

	hc    *handledCtx     // &handled when correlation is on, else nil
	orig  context.Context // the message's context when it arrived
	outer context.Context // the context dead-letter restores and nack-delay waits on

	key     string // dedup: the claimed key
	slot    int
	token   uint64
	claimed bool

	// now is monoNow() read once, after the dedup key was made, for the
	// dedup claim and the first attempt's deadline (zero when both steps
	// are off): on virtual machines a clock read costs 30-60 ns
	// (kvm-clock), about a tenth of the whole stack.
	now int64
}

// handle is the stack: correlation -> nack-delay -> dead-letter -> dedup ->
// breaker -> retry -> timeout -> recover -> h, each step where it is on.
//
// Its frame is kept small, with the message's state in c (on the heap,
// with its contexts) and the steps before and after the handler in frames
// of their own: the handler runs on top of this frame, and Watermill runs
// each message on a new goroutine whose stack starts at 2 KiB. With the
// state here, the stack outgrew that on every message and was copied
// (runtime.copystack: about 6% of the CPU time of BenchmarkStack/default).
func (s *fused) handle(msg *message.Message) (out []*message.Message, err error) {
	// One allocation for the contexts of a message that succeeds at once,
	// correlation's and the first attempt's, and its state.
	c := new(fusedCtxs)
	if s.dd != nil && !s.recover {
		// A panic would skip after: do not hold the claim for ever.
		defer s.releaseIfPanicked(c)
	}
	if err = s.before(msg, c); err == nil && (s.dd == nil || c.claimed) {
		if s.br != nil && !s.br.clean.Load() {
			// Breaker open, half-open or counting failures: gobreaker decides.
			out, err = s.br.slow(s.retried, msg)
		} else {
			out, err = s.attempt(msg, &c.attempt, c.now)
		}
	}
	return s.after(msg, c, out, err)
}

// before is correlation and the dedup claim. It returns the error of a
// message that must not run: a duplicate, or one whose key failed.
//
//go:noinline
func (s *fused) before(msg *message.Message, c *fusedCtxs) (err error) {
	// Correlation.
	c.orig = msg.Context()
	if s.correlation {
		c.hc = &c.handled
		*c.hc = handledCtx{Context: c.orig, correlationID: correlationOf(msg), messageID: msg.UUID}
		msg.SetContext(c.hc)
	}
	c.outer = msg.Context()

	// Dedup: claim.
	if s.dd != nil {
		if c.key, err = s.dd.key(msg); err != nil {
			return err
		}
		c.now = monoNow()
		c.token = ownerSeq.Add(1)
		var state ClaimState
		state, c.slot = s.dd.mem.claim(c.key, "", c.token, c.now, heldLease)
		if state == InProgress {
			if state, c.slot, err = s.dd.waitMemory(msg, c.key, c.token); err != nil {
				return err
			}
			c.now = monoNow() // the first attempt's deadline counts from here
		}
		if state != Claimed {
			return s.duplicate(msg, c.key, state)
		}
		c.claimed = true
	} else if s.timeout > 0 {
		c.now = monoNow()
	}
	return nil
}

// after is the dedup commit or release, dead-letter and nack-delay, and
// correlation's end, after the handling ended with out and err.
//
//go:noinline
func (s *fused) after(msg *message.Message, c *fusedCtxs, out []*message.Message, err error) ([]*message.Message, error) {
	// Dedup: commit or release.
	if c.claimed {
		c.claimed = false
		if err != nil {
			s.dd.mem.release(c.key, c.slot, "", c.token)
			out = nil
		} else {
			s.dd.mem.commit(c.key, c.slot, s.dd.cfg.TTL)
		}
	}

	// Dead-letter and nack-delay.
	if err != nil {
		if s.dl != nil {
			out = nil
		}
		err = s.failed(msg, c.outer, err)
	} else if s.nack != nil {
		s.nack.succeeded()
	}

	// Correlation: restore the context, stamp what the handler returned.
	if c.hc != nil {
		msg.SetContext(c.orig)
		if len(out) > 0 {
			stampAll(out, c.hc)
		}
	}
	return out, err
}

// releaseIfPanicked releases the dedup claim of a message whose handling
// panicked through the stack (its recover step off): the claim is held
// until released, so it must not outlive the handling.
func (s *fused) releaseIfPanicked(c *fusedCtxs) {
	if c.claimed {
		s.dd.mem.release(c.key, c.slot, "", c.token)
	}
}

// stampAll stamps the messages a handler returned with the correlation of
// the handled message.
//
//go:noinline
func stampAll(out []*message.Message, hc *handledCtx) {
	for _, m := range out {
		stamp(m, hc.correlationID, hc.messageID)
	}
}

// attempt is the breaker's fast path: the first attempt (timeout ->
// recover -> h), its deadline counted from now (monoNow, read just before
// the dedup claim), then, when it failed, retry and the breaker's count.
// It is a frame of its own, under which only the handler runs, so that the
// frame of handle, under which the dedup store runs too, stays small.
func (s *fused) attempt(msg *message.Message, actx *attemptCtx, now int64) (out []*message.Message, err error) {
	if s.timeout > 0 {
		orig := msg.Context()
		actx.init(orig, now, s.timeout)
		msg.SetContext(actx)
		if s.recover {
			out, err = protect(s.h, msg)
		} else {
			out, err = s.h(msg)
		}
		if err != nil && attemptTimedOut(msg, actx, orig, err) {
			out, err = nil, &TimeoutError{After: s.timeout, Err: err}
		} else {
			actx.cancel(context.Canceled)
			msg.SetContext(orig)
		}
	} else if s.recover {
		out, err = protect(s.h, msg)
	} else {
		out, err = s.h(msg)
	}
	if err != nil {
		out, err = s.attemptFailed(msg, out, err)
	}
	return out, err
}

// attemptFailed is retry and then the breaker after the first attempt
// failed with err on the breaker's fast path.
//
//go:noinline
func (s *fused) attemptFailed(msg *message.Message, out []*message.Message, err error) ([]*message.Message, error) {
	if s.retry != nil {
		out, err = retryAfterFailure(*s.retry, s.inner, msg, err)
	}
	if err != nil && s.br != nil {
		s.br.cleanFailed(err)
	}
	return out, err
}

// failed is dead-letter and then nack-delay after the handling failed with
// err; outer is the context dead-letter restores. It returns the error
// that escapes, nil when msg was dead-lettered.
//
//go:noinline
func (s *fused) failed(msg *message.Message, outer context.Context, err error) error {
	if s.dl != nil {
		err = deadLetterFailed(s.dl, msg, outer, err)
	}
	if s.nack != nil {
		if err == nil {
			s.nack.succeeded()
		} else {
			s.nack.failed(msg)
		}
	}
	return err
}

// duplicate is dedup's outcome for a key it did not claim.
//
//go:noinline
func (s *fused) duplicate(msg *message.Message, key string, state ClaimState) error {
	_, err := s.dd.duplicate(msg, key, state)
	return err
}
