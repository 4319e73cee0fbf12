package middleware

import (
	"errors"
	"fmt"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/busline/busline/schema"
)

// Permanent marks err as permanent: retrying cannot help, so the retry
// middleware gives up at once and the dead-letter middleware moves the
// message to its dead-letter destination. Permanent(nil) is nil. With
// [Redeliver] it is the vocabulary of error classes: everything else is
// transient.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// PermanentError is the error [Permanent] returns.
type PermanentError struct {
	Err error
}

// Error returns the wrapped error's text.
func (e *PermanentError) Error() string { return e.Err.Error() }

// Unwrap returns the wrapped error.
func (e *PermanentError) Unwrap() error { return e.Err }

// IsPermanent reports whether err, or any error it wraps, is permanent: made
// by [Permanent], or a *schema.Error (bad input: undecodable payload,
// unknown type or version, malformed envelope).
func IsPermanent(err error) bool {
	var p *PermanentError
	var s *schema.Error
	return errors.As(err, &p) || errors.As(err, &s)
}

// Redeliver marks err as a reason to nack the message for a later
// redelivery: [DeadLetter] never dead-letters it and [Breaker] does not
// count it ([IsRedelivery]); [Retry] retries it like a transient error
// first. Redeliver(nil) is nil.
func Redeliver(err error) error {
	if err == nil {
		return nil
	}
	return &RedeliveryError{Err: err}
}

// RedeliveryError is the error [Redeliver] returns.
type RedeliveryError struct {
	Err error
}

// Error returns the wrapped error's text.
func (e *RedeliveryError) Error() string { return e.Err.Error() }

// Unwrap returns the wrapped error.
func (e *RedeliveryError) Unwrap() error { return e.Err }

// Reason codes the middleware uses as dead-letter reasons and error types
// (busline_dlq_reason, the OpenTelemetry error.type attribute) when an error
// carries no ErrorType() of its own. They are low-cardinality and stable.
const (
	// ReasonHandlerError: the handler returned an error with no ErrorType.
	ReasonHandlerError = "handler_error"
	// ReasonPermanent: a [Permanent] error with no ErrorType.
	ReasonPermanent = "permanent"
	// ReasonRetriesExhausted: a transient error with no ErrorType outlived
	// every attempt [Retry] allowed.
	ReasonRetriesExhausted = "retries_exhausted"
	// ReasonPanic: the handler panicked ([PanicError]).
	ReasonPanic = "panic"
	// ReasonTimeout: an attempt ran out of its [Timeout] ([TimeoutError]).
	ReasonTimeout = "timeout"
	// ReasonDedupKey: the dedup key function failed for the message.
	ReasonDedupKey = "dedup_key_invalid"
)

// ErrorType returns the machine-readable reason code of err: the ErrorType()
// of the first error in its chain that has one, else [ReasonPermanent] for a
// permanent error, [ReasonRetriesExhausted] for an error [Retry] gave up on
// after more than one attempt, and [ReasonHandlerError] otherwise. It returns
// "" for a nil error.
func ErrorType(err error) string {
	if err == nil {
		return ""
	}
	var t interface{ ErrorType() string }
	if errors.As(err, &t) {
		if s := t.ErrorType(); s != "" {
			return s
		}
	}
	if IsPermanent(err) {
		return ReasonPermanent
	}
	var r *RetryError
	if errors.As(err, &r) && r.Attempts > 1 {
		return ReasonRetriesExhausted
	}
	return ReasonHandlerError
}

// IsRedelivery reports whether err asks for the message to be nacked and
// delivered again later rather than dead-lettered: made by [Redeliver], a
// message the circuit breaker did not let through, [ErrInProgress] (a
// concurrent duplicate) and [DedupStoreError] (the dedup store failed;
// dedup fails closed). [DeadLetter] passes such errors through, and any
// error once the message's own context is done (shutdown). A handler's
// error that wraps context.Canceled while the message's context is live
// (a context of the handler's own was cancelled) is an ordinary failure:
// retried within the budget, then dead-lettered.
func IsRedelivery(err error) bool {
	if err == nil {
		return false
	}
	var r *RedeliveryError
	var d *DedupStoreError
	return errors.As(err, &r) || errors.Is(err, ErrInProgress) || errors.As(err, &d) ||
		errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests)
}

// PanicError is the error [Recover] returns for a panicking handler. Its
// ErrorType is [ReasonPanic]; it is transient, so [Retry] retries it.
type PanicError struct {
	// Value is what the handler passed to panic.
	Value any
	// Stack is the goroutine's stack trace at the panic.
	Stack []byte
}

// Error returns "middleware: panic: " and the panic value; the stack trace
// stays in Stack so that dead-letter headers stay small.
func (e *PanicError) Error() string { return fmt.Sprintf("middleware: panic: %v", e.Value) }

// ErrorType returns [ReasonPanic].
func (e *PanicError) ErrorType() string { return ReasonPanic }

// Unwrap returns the panic value when it is an error, else nil.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}

// TimeoutError is the error [Timeout] returns when an attempt ran out of
// time. Its ErrorType is [ReasonTimeout]; it is transient, so [Retry]
// retries it with a fresh deadline.
type TimeoutError struct {
	// After is the per-attempt time budget that ran out.
	After time.Duration
	// Err is what the handler returned (often context.DeadlineExceeded).
	Err error
}

// Error describes the timeout and the handler's error.
func (e *TimeoutError) Error() string {
	return "middleware: attempt timed out after " + e.After.String() + ": " + e.Err.Error()
}

// ErrorType returns [ReasonTimeout].
func (e *TimeoutError) ErrorType() string { return ReasonTimeout }

// Unwrap returns the handler's error.
func (e *TimeoutError) Unwrap() error { return e.Err }

// RetryError is the error [Retry] returns when it gives up. It carries the
// attempt history, which [DeadLetter] records in the dead-letter metadata.
type RetryError struct {
	// Err is the last attempt's error.
	Err error
	// Attempts is the number of attempts made (1 when Err was permanent).
	Attempts int
	// FirstFailure and LastFailure are when the first and the last attempt failed.
	FirstFailure, LastFailure time.Time
}

// Error returns the last attempt's error text.
func (e *RetryError) Error() string { return e.Err.Error() }

// Unwrap returns the last attempt's error.
func (e *RetryError) Unwrap() error { return e.Err }

// ErrInProgress is returned by [Dedup] for a message whose key another
// delivery holds a live claim on (a concurrent duplicate) when the
// message's context ended while it waited for that claim to end; the
// returned error wraps the context's error too. It is a redelivery error
// ([IsRedelivery]): the message is nacked and comes back later, when the
// other delivery has committed (then it is acked as a duplicate) or
// released its claim (then it is processed).
var ErrInProgress error = inProgressError{}

type inProgressError struct{}

func (inProgressError) Error() string     { return "middleware: duplicate message in progress" }
func (inProgressError) ErrorType() string { return "dedup_in_progress" }

// DedupStoreError is returned by [Dedup] when its store fails to claim a
// key: dedup fails closed, so the message is nacked for a later redelivery
// ([IsRedelivery]) instead of being processed without protection.
type DedupStoreError struct {
	// Op is the store operation: "claim".
	Op string
	// Err is the store's error.
	Err error
}

// Error describes the failed store operation.
func (e *DedupStoreError) Error() string {
	return "middleware: dedup store " + e.Op + ": " + e.Err.Error()
}

// Unwrap returns the store's error.
func (e *DedupStoreError) Unwrap() error { return e.Err }

// ErrorType returns "dedup_store".
func (e *DedupStoreError) ErrorType() string { return "dedup_store" }
