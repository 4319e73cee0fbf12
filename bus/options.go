package bus

import (
	"log/slog"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/middleware"
)

// Option configures a [Bus] beyond its [Config]: the extras most services
// never touch.
type Option func(*options)

type options struct {
	logger *slog.Logger
	stack  []func(*middleware.StackConfig)
}

// WithLogger sets the logger of the bus and of Watermill under it.
// Default: slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

// WithStack changes the default middleware stack of every handler: fn
// receives the stack configuration the bus built (dead-letter publisher and
// topic filled in) and may change any field. Handler options apply after it.
func WithStack(fn func(*middleware.StackConfig)) Option {
	return func(o *options) { o.stack = append(o.stack, fn) }
}

// HandlerOption configures one handler registered with [Bus.Handle].
type HandlerOption func(*handlerOptions)

type handlerOptions struct {
	stack []func(*middleware.StackConfig)
	extra []message.HandlerMiddleware
}

// HandlerStack changes this handler's middleware stack: fn receives the
// configuration after the bus-wide [WithStack] changes and may change any
// field, e.g. switch steps off or tune retries.
func HandlerStack(fn func(*middleware.StackConfig)) HandlerOption {
	return func(o *handlerOptions) { o.stack = append(o.stack, fn) }
}

// HandlerMiddleware adds middleware inside the default stack, between it
// and the handler, in the order given (the first is outermost).
func HandlerMiddleware(mws ...message.HandlerMiddleware) HandlerOption {
	return func(o *handlerOptions) { o.extra = append(o.extra, mws...) }
}
