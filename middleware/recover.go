package middleware

import (
	"runtime/debug"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Recover returns a middleware that turns a panic in the handler into a
// [*PanicError] carrying the panic value and the stack trace. The error is
// transient: [Retry] retries it and [DeadLetter] dead-letters it with reason
// [ReasonPanic] like any other error. Place it next to the handler so that
// every middleware outside it sees an ordinary error.
func Recover() message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) (out []*message.Message, err error) {
			defer func() {
				if v := recover(); v != nil {
					out, err = nil, &PanicError{Value: v, Stack: debug.Stack()}
				}
			}()
			return h(msg)
		}
	}
}
