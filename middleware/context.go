package middleware

import (
	"context"
)

// handledKey is the context key under which [Correlation] stores the
// correlation facts of the message being handled.
type handledKey struct{}

// attemptKey is the context key under which [Retry] stores the attempt number.
type attemptKey struct{}

// handledCtx carries the correlation id and the id of the handled message.
// It is a context itself so that one allocation gives both the value and the
// derived context; cancellation and deadlines come from the embedded parent.
type handledCtx struct {
	context.Context
	correlationID string
	messageID     string
}

// Value returns the handled facts for handledKey and defers to the parent
// for every other key.
func (c *handledCtx) Value(key any) any {
	if key == (handledKey{}) {
		return c
	}
	return c.Context.Value(key)
}

func handledFromContext(ctx context.Context) *handledCtx {
	if ctx == nil {
		return nil
	}
	h, _ := ctx.Value(handledKey{}).(*handledCtx)
	return h
}

// withHandled returns a context carrying correlationID and the handled
// message's id (the causation parent of anything published under it).
func withHandled(parent context.Context, correlationID, messageID string) context.Context {
	return &handledCtx{Context: parent, correlationID: correlationID, messageID: messageID}
}

// CorrelationIDFromContext returns the correlation id of the message being
// handled, as set by [Correlation], or "" when ctx carries none.
func CorrelationIDFromContext(ctx context.Context) string {
	if h := handledFromContext(ctx); h != nil {
		return h.correlationID
	}
	return ""
}

// CausationIDFromContext returns the id of the message being handled: the
// causation id of every message published while handling it. It is "" when
// ctx carries none (outside a handler wrapped by [Correlation]).
func CausationIDFromContext(ctx context.Context) string {
	if h := handledFromContext(ctx); h != nil {
		return h.messageID
	}
	return ""
}

// ContextWithCorrelation returns a copy of ctx that carries correlationID and
// causationID as [Correlation] would, for code that starts work outside a
// handler (an HTTP edge, a test) and wants [Propagate] to use them.
// Empty strings are allowed and mean "none".
func ContextWithCorrelation(ctx context.Context, correlationID, causationID string) context.Context {
	return withHandled(ctx, correlationID, causationID)
}

// AttemptFromContext returns the 1-based number of the current handling
// attempt as set by [Retry]: 1 on the first attempt, 2 on the first retry and
// so on. It returns 1 when ctx carries no attempt (no Retry in the stack, or
// the first attempt, which runs on the message's own context).
func AttemptFromContext(ctx context.Context) int {
	if ctx == nil {
		return 1
	}
	if n, ok := ctx.Value(attemptKey{}).(int); ok {
		return n
	}
	return 1
}
