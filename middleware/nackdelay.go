package middleware

import (
	"context"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// NackDelayConfig configures [NackDelay]. Zero fields mean the defaults.
type NackDelayConfig struct {
	// InitialDelay is the wait before the first nack after a success.
	// Zero means 100ms.
	InitialDelay time.Duration
	// MaxDelay caps the wait. Zero means 5s.
	MaxDelay time.Duration
	// Stopping, when closed, ends every wait and skips the ones to come:
	// a graceful shutdown began (see StackConfig.Stopping), and brokers
	// then hold a nacked message for later instead of delivering it again
	// at once. Nil means never.
	Stopping <-chan struct{}
}

// Defaults of [NackDelayConfig].
const (
	DefaultNackInitialDelay = 100 * time.Millisecond
	DefaultNackMaxDelay     = 5 * time.Second
)

// NackDelay returns a middleware that delays every error escaping the stack,
// before the router nacks the message, so that a nacked message comes back
// after a delay rather than at once: brokers redeliver a nacked message
// immediately (RabbitMQ requeues it, Kafka's subscriber loops on it, the
// in-process broker resends it), which turns a persistent failure into a hot
// loop. It is Busline's one nack delay: the brokers and [DeadLetter] do not
// wait on their own. While it waits the message stays unacked, which also
// pauses consumption of its partition or queue.
//
// The wait grows while errors repeat: InitialDelay doubled per consecutive
// error this middleware instance saw (across messages), capped at MaxDelay,
// with ±25% jitter, and reset by the next success. It ends early, and no wait
// happens at all, when the message's context is cancelled or
// NackDelayConfig.Stopping is closed (shutdown): those messages are nacked
// at once. NackDelay holds no timers or goroutines
// between messages.
func NackDelay(cfg NackDelayConfig) message.HandlerMiddleware {
	cfg = cfg.withDefaults()
	return func(h message.HandlerFunc) message.HandlerFunc {
		n := &nackDelay{cfg: cfg}
		return func(msg *message.Message) ([]*message.Message, error) {
			out, err := h(msg)
			if err == nil {
				n.succeeded()
				return out, nil
			}
			n.failed(msg)
			return out, err
		}
	}
}

func (cfg NackDelayConfig) withDefaults() NackDelayConfig {
	if cfg.InitialDelay < 0 || cfg.MaxDelay < 0 {
		panic("middleware: NackDelayConfig delays must not be negative")
	}
	if cfg.InitialDelay == 0 {
		cfg.InitialDelay = DefaultNackInitialDelay
	}
	if cfg.MaxDelay == 0 {
		cfg.MaxDelay = DefaultNackMaxDelay
	}
	if cfg.MaxDelay < cfg.InitialDelay {
		cfg.MaxDelay = cfg.InitialDelay
	}
	return cfg
}

// nackDelay is the state of one handler's [NackDelay].
type nackDelay struct {
	cfg         NackDelayConfig
	consecutive atomic.Int32
}

// succeeded resets the error streak.
func (n *nackDelay) succeeded() {
	if n.consecutive.Load() != 0 {
		n.consecutive.Store(0)
	}
}

// failed waits before an error escapes, unless msg's context is done.
func (n *nackDelay) failed(msg *message.Message) {
	ctx := msg.Context()
	if ctx.Err() != nil || closed(n.cfg.Stopping) {
		return
	}
	c := n.consecutive.Load()
	if c < 64 {
		n.consecutive.Add(1)
	}
	d := n.cfg.InitialDelay
	for ; c > 0 && d < n.cfg.MaxDelay; c-- {
		d *= 2
	}
	d = min(d, n.cfg.MaxDelay)
	d = time.Duration(float64(d) * (0.75 + 0.5*rand.Float64()))
	sleep(ctx, n.cfg.Stopping, d)
}

// sleep waits d or until ctx is done or stop closed, whichever comes first.
func sleep(ctx context.Context, stop <-chan struct{}, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-stop:
	case <-t.C:
	}
}

// closed reports whether ch is closed; a nil ch never is.
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
