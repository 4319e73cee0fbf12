package middleware

import (
	"fmt"
	"math/bits"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Step names one middleware of [Stack]. Steps are bit flags so that several
// can be switched off at once in StackConfig.Disable.
type Step uint16

// The steps of [Stack], in their order, outermost first.
const (
	StepCorrelation Step = 1 << iota // [Correlation]
	StepNackDelay                    // [NackDelay]
	StepDeadLetter                   // [DeadLetter]
	StepDedup                        // [Dedup]
	StepBreaker                      // [Breaker]
	StepRetry                        // [Retry]
	StepThrottle                     // [Throttle]
	StepTimeout                      // [Timeout]
	StepRecover                      // [Recover]

	stepEnd
)

var stepNames = [...]string{
	"correlation", "nack-delay", "dead-letter", "dedup", "breaker",
	"retry", "throttle", "timeout", "recover",
}

// String returns the step's name ("dead-letter"), or the names of several
// steps joined by "|".
func (s Step) String() string {
	if s == 0 {
		return "none"
	}
	var names []string
	for v := s; v != 0; v &= v - 1 {
		i := bits.TrailingZeros16(uint16(v))
		if i < len(stepNames) {
			names = append(names, stepNames[i])
		} else {
			names = append(names, fmt.Sprintf("Step(%#x)", uint16(1)<<i))
		}
	}
	return strings.Join(names, "|")
}

// StackConfig configures [Stack]. The zero value is the safe default stack
// minus the dead-letter step, which needs a publisher: set
// DeadLetter.Publisher (and usually DeadLetter.Topic).
type StackConfig struct {
	// Name names the handler in breaker state changes when
	// Breaker.Name is empty.
	Name string
	// DeadLetter configures the dead-letter step. It is on when
	// DeadLetter.Publisher is set; without one, failed messages are nacked
	// (after the nack delay) and redelivered instead.
	DeadLetter DeadLetterConfig
	// Dedup configures the dedup step; zero means a private in-memory
	// store per handler.
	Dedup DedupConfig
	// Breaker configures the circuit breaker step.
	Breaker BreakerConfig
	// Retry configures the retry step.
	Retry RetryConfig
	// Throttle configures the throttle step; the zero value limits nothing
	// and costs nothing.
	Throttle ThrottleConfig
	// Timeout is the per-attempt time budget. Zero means [DefaultTimeout].
	Timeout time.Duration
	// NackDelay configures the wait before an error escapes the stack.
	NackDelay NackDelayConfig
	// Disable switches steps off: StepDedup|StepBreaker, for example.
	Disable Step
	// Observer is given to every step whose own Observer is nil. Nil
	// means none.
	Observer Observer
	// Stopping, when closed, says a graceful shutdown began: it is given
	// to the breaker and nack-delay steps whose own Stopping is nil, so
	// that a message the open breaker holds, or a failed message waiting
	// for its nack, is nacked at once instead of holding the shutdown (a
	// durable broker delivers it again later). The bus closes it when
	// Close begins. Nil means never.
	Stopping <-chan struct{}
}

// Steps returns the steps [Stack] builds for c, outermost first, as one
// Step value per step.
func (c StackConfig) Steps() []Step {
	var out []Step
	for s := StepCorrelation; s < stepEnd; s <<= 1 {
		if c.Disable&s != 0 {
			continue
		}
		if s == StepDeadLetter && c.DeadLetter.Publisher == nil {
			continue
		}
		if s == StepThrottle && c.Throttle.Rate == 0 && c.Throttle.Concurrency == 0 {
			continue
		}
		out = append(out, s)
	}
	return out
}

// Stack returns Busline's default middleware stack as one middleware,
// composed in this order, outermost first (see the package documentation,
// section Ordering, for the reasons):
//
//	correlation -> nack-delay -> dead-letter -> dedup -> breaker ->
//	retry -> throttle -> timeout -> recover -> handler
//
// Each step is built from its field of cfg, so zero fields mean each
// middleware's defaults, and any step can be switched off with
// cfg.Disable. Stateful steps (dedup's default store, breaker, throttle,
// nack-delay) get their own state for each handler the returned middleware
// wraps. Stack panics on invalid configuration, like the constructors it
// calls.
func Stack(cfg StackConfig) message.HandlerMiddleware {
	steps := cfg.Steps()
	mws := make([]message.HandlerMiddleware, 0, len(steps))
	for _, s := range steps {
		switch s {
		case StepCorrelation:
			mws = append(mws, Correlation())
		case StepNackDelay:
			n := cfg.NackDelay
			if n.Stopping == nil {
				n.Stopping = cfg.Stopping
			}
			mws = append(mws, NackDelay(n))
		case StepDeadLetter:
			mws = append(mws, DeadLetter(cfg.deadLetter()))
		case StepDedup:
			d := cfg.Dedup
			d.Observer = observerOr(d.Observer, cfg.Observer)
			mws = append(mws, Dedup(d))
		case StepBreaker:
			mws = append(mws, Breaker(cfg.breaker()))
		case StepRetry:
			r := cfg.Retry
			r.Observer = observerOr(r.Observer, cfg.Observer)
			mws = append(mws, Retry(r))
		case StepThrottle:
			t := cfg.Throttle
			t.Observer = observerOr(t.Observer, cfg.Observer)
			mws = append(mws, Throttle(t))
		case StepTimeout:
			mws = append(mws, Timeout(cfg.timeout()))
		case StepRecover:
			mws = append(mws, Recover())
		}
	}
	return Chain(mws...)
}

func (c StackConfig) deadLetter() DeadLetterConfig {
	dl := c.DeadLetter
	dl.Observer = observerOr(dl.Observer, c.Observer)
	return dl
}

func (c StackConfig) breaker() BreakerConfig {
	b := c.Breaker
	b.Observer = observerOr(b.Observer, c.Observer)
	if b.Stopping == nil {
		b.Stopping = c.Stopping
	}
	if b.Name == "" {
		b.Name = c.Name
	}
	return b
}

func (c StackConfig) timeout() time.Duration {
	if c.Timeout == 0 {
		return DefaultTimeout
	}
	return c.Timeout
}

// Chain composes middlewares into one, the first outermost, like adding
// them to a Watermill router in this order.
//
// The composed handler grows its goroutine's stack once, on entry, to room
// for the chain (see growStack), so that the chain does not outgrow it
// midway.
func Chain(mws ...message.HandlerMiddleware) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		for i := len(mws) - 1; i >= 0; i-- {
			h = mws[i](h)
		}
		if len(mws) < 2 {
			return h
		}
		return func(msg *message.Message) ([]*message.Message, error) {
			growStack(len(msg.UUID))
			return h(msg)
		}
	}
}

// chainStack is the stack room, in bytes, a chain of middlewares and its
// handler are given on entry (see growStack).
const chainStack = 2048

// growStack makes sure the goroutine has about chainStack bytes of stack
// free below the caller, by taking a frame that large. Watermill runs every
// message on a new goroutine, whose stack starts at 2 KiB (of which 928
// are a guard): a chain of middlewares outgrows it, and the runtime then
// copies the stack, adjusting every frame on it, on every message (measured:
// a fifth of the CPU time of the in-process bus with the default stack and
// a no-op handler, when the copy happened inside the dedup step). Growing it
// here, with few frames on the stack, costs a fraction of that, once per
// message goroutine, and nothing when the stack is already large enough.
// n is any value (it keeps the frame from being optimised away).
func growStack(n int) byte {
	var room [chainStack]byte
	room[n%chainStack] = 1
	return room[(n+1)%chainStack]
}
