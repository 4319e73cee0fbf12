package middleware

import (
	"context"
	"errors"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// DefaultTimeout is the per-attempt time budget [Stack] uses when
// StackConfig.Timeout is zero.
const DefaultTimeout = 30 * time.Second

// Timeout returns a middleware that gives each handler attempt a context
// that is cancelled after d (context.WithTimeout), and cancelled when the
// attempt ends. It is cooperative: the handler must watch msg.Context().
// When the attempt fails after its deadline passed (and the message's own
// context is still live, and the error is not permanent), the error becomes
// a [*TimeoutError] (ErrorType [ReasonTimeout]), which is transient. The
// message's original context is restored when the attempt ends, so an
// attempt after it (see [Retry]) starts with a fresh budget. A handler that
// succeeds after the deadline keeps its success. Timeout panics when d <= 0.
func Timeout(d time.Duration) message.HandlerMiddleware {
	if d <= 0 {
		panic("middleware: Timeout duration must be positive, got " + d.String())
	}
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			orig := msg.Context()
			ctx, cancel := context.WithTimeout(orig, d)
			msg.SetContext(ctx)
			out, err := h(msg)
			cancel() // a context whose deadline passed keeps DeadlineExceeded
			msg.SetContext(orig)
			if err != nil && timedOut(ctx, orig, err) {
				return nil, &TimeoutError{After: d, Err: err}
			}
			return out, err
		}
	}
}

// timedOut reports whether an attempt with context ctx, which failed with
// err, ran out of time: its deadline passed while the message's own
// context orig is live, and err is not permanent.
func timedOut(ctx, orig context.Context, err error) bool {
	return errors.Is(ctx.Err(), context.DeadlineExceeded) && orig.Err() == nil && !IsPermanent(err)
}
