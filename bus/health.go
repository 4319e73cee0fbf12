package bus

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/busline/busline/internal/health"
)

// ErrNotRunning is returned by [Bus.Health] before [Bus.Run] has
// subscribed every handler.
var ErrNotRunning = errors.New("bus: not running")

// Health reports whether the bus is ready to process messages (a
// readiness check): nil when [Bus.Run] is running with every handler
// subscribed and the broker answers a ping within ctx. Otherwise it
// returns ErrNotRunning (not started yet, or still subscribing),
// ErrClosed (shutting down or closed), ErrHandlersStopped (the handlers
// stopped on their own) or the broker's error.
func (b *Bus) Health(ctx context.Context) error {
	if err := b.runState(); err != nil {
		return err
	}
	if err := b.broker.Ping(ctx); err != nil {
		return fmt.Errorf("bus: broker %s: %w", b.cfg.Broker, err)
	}
	return nil
}

// Live reports whether the bus is alive (a liveness check): nil unless
// the handlers stopped on their own while the bus was running
// (ErrHandlersStopped), which a restart may cure. A bus not started yet, a
// bus shutting down and a broker that is unreachable for now are alive:
// restarting the process would not help them.
func (b *Bus) Live() error {
	if err := b.runState(); errors.Is(err, ErrHandlersStopped) {
		return err
	}
	return nil
}

func (b *Bus) runState() error {
	b.mu.Lock()
	st := b.state
	b.mu.Unlock()
	switch st {
	case stateNew:
		return ErrNotRunning
	case stateClosing:
		return ErrClosed
	}
	if b.router.IsClosed() {
		return ErrHandlersStopped
	}
	select {
	case <-b.router.Running():
		return nil
	default:
		return ErrNotRunning
	}
}

// DefaultHealthTimeout bounds the broker ping of [Bus.HealthHandler] when
// the request's context has no earlier deadline.
const DefaultHealthTimeout = health.DefaultTimeout

// HealthStatus is the JSON body of [Bus.HealthHandler] and
// [Bus.LiveHandler]: Status "ok" or "unavailable", Broker the broker's
// name, Error what is wrong when unavailable.
type HealthStatus = health.Status

// HealthHandler returns an HTTP handler for readiness probes: it answers
// 200 with {"status":"ok","broker":...} when [Bus.Health] returns nil,
// else 503 with the error in the body. The check is bounded by the
// request's context and [DefaultHealthTimeout].
func (b *Bus) HealthHandler() http.Handler {
	return health.Handler(b.cfg.Broker, DefaultHealthTimeout, b.Health)
}

// LiveHandler returns an HTTP handler for liveness probes: 200 or 503
// after [Bus.Live], with the same body as [Bus.HealthHandler].
func (b *Bus) LiveHandler() http.Handler {
	return health.Handler(b.cfg.Broker, 0, func(context.Context) error { return b.Live() })
}
