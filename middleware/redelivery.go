package middleware

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/schema"
)

// Delayed-redelivery metadata keys: the budget of a message travels with it
// across redeliveries, restarts and instances. [Replay] strips them, which
// resets the budget.
const (
	// KeyRetryRounds is the number of delayed rounds the message went
	// through, in decimal.
	KeyRetryRounds = schema.PrivatePrefix + "retry_rounds"
	// KeyRetryAttempts is the number of attempts made in earlier rounds, in
	// decimal.
	KeyRetryAttempts = schema.PrivatePrefix + "retry_attempts"
	// KeyRetryFirstFailure is when the first attempt of the first round
	// failed (RFC 3339, nanoseconds, UTC).
	KeyRetryFirstFailure = schema.PrivatePrefix + "retry_first_failure"
	// KeyRetryHistory is the rounds so far, a JSON array of [RetryRound].
	KeyRetryHistory = schema.PrivatePrefix + "retry_history"

	retryPrefix = schema.PrivatePrefix + "retry_"
)

// retryKeys are the budget's keys, which [Propagate] removes.
var retryKeys = [...]string{KeyRetryRounds, KeyRetryAttempts, KeyRetryFirstFailure, KeyRetryHistory}

// DefaultRedeliveryDelays are the waits of the delayed tier when
// RedeliveryConfig.Delays is nil: five rounds, about 71 minutes in all.
var DefaultRedeliveryDelays = []time.Duration{
	time.Second, 10 * time.Second, time.Minute, 10 * time.Minute, time.Hour,
}

// DefaultRedeliveryMaxTotal is RedeliveryConfig.MaxTotal's default: the
// default delays plus room for the in-process retries of six rounds.
const DefaultRedeliveryMaxTotal = 2 * time.Hour

// maxHistoryError bounds the error text kept per round in
// busline_retry_history, in bytes.
const maxHistoryError = 256

// ErrTierFull is what a [Redeliverer]'s error wraps when its delayed tier
// has no room for another message (the in-process broker's bounded
// timers): the message is then dead-lettered at once, with reason
// [ReasonTierFull], rather than nacked and handled again in a loop that
// would ignore its budget. Other Redeliverer errors (a broker outage) nack
// the message, which comes back after the nack delay.
var ErrTierFull = errors.New("middleware: delayed redelivery tier full")

// ReasonTierFull is the dead-letter reason of a message whose delayed
// tier had no room ([ErrTierFull]).
const ReasonTierFull = "redelivery_full"

// tierFullError is a handler's error that could not go to the full tier.
type tierFullError struct{ err, tier error }

func (e *tierFullError) Error() string {
	return e.err.Error() + " (not redelivered: " + e.tier.Error() + ")"
}
func (e *tierFullError) Unwrap() []error { return []error{e.err, e.tier} }

// Redeliverer sends a message back to the subscription it was consumed from
// (one handler's queue or group, not other subscribers of the topic) no
// earlier than delay from now, durably where the broker allows it: RabbitMQ
// through a TTL wait queue, Kafka through a retry topic, the in-process
// broker through a timer. Redeliver returns once the broker holds the copy;
// delay is one of the delays the redeliverer was made for. Implementations
// are safe for concurrent use.
type Redeliverer interface {
	Redeliver(ctx context.Context, msg *message.Message, delay time.Duration) error
}

// RedeliveryConfig configures the delayed tier of [DeadLetter]: when the
// in-process retries of [Retry] are exhausted and the error is not
// permanent, the message is handed to Redeliverer for a later round instead
// of being dead-lettered, and acked, so the consumer moves on.
type RedeliveryConfig struct {
	// Redeliverer schedules the later round. Nil means no delayed tier: a
	// failed message is dead-lettered once [Retry] gives up.
	Redeliverer Redeliverer
	// Delays are the waits before round 2, 3, ...: the number of delays is
	// the number of delayed rounds. Nil means [DefaultRedeliveryDelays].
	Delays []time.Duration
	// MaxTotal caps the whole budget: no round is scheduled that would
	// start later than MaxTotal after the first failure. Zero means
	// [DefaultRedeliveryMaxTotal]; negative means no time cap.
	MaxTotal time.Duration
}

// RedeliveryInfo describes a message handed to the delayed tier.
type RedeliveryInfo struct {
	// Message is the copy handed to the Redeliverer, its budget headers
	// updated.
	Message *message.Message
	// Round is the round that will run after the delay (2 for the first
	// redelivery).
	Round int
	// Delay is the wait before it.
	Delay time.Duration
	// Err is the error of the round that failed.
	Err error
}

// RetryRound is one failed round in busline_retry_history.
type RetryRound struct {
	// Attempts is the number of attempts of the round.
	Attempts int `json:"attempts"`
	// Error is the last attempt's error text (truncated).
	Error string `json:"error"`
	// Reason is its [ErrorType].
	Reason string `json:"reason"`
	// FailedAt is when the round's last attempt failed.
	FailedAt time.Time `json:"failed_at"`
	// Delay is the wait that followed the round ("" for the last round of
	// a dead letter).
	Delay string `json:"delay,omitempty"`
}

// RetryBudget is what a message's headers say of its earlier rounds.
type RetryBudget struct {
	// Rounds is the number of rounds that failed before this delivery.
	Rounds int
	// Attempts is the number of attempts those rounds made.
	Attempts int
	// FirstFailure is when the first of them failed; zero when Rounds is 0.
	FirstFailure time.Time
	// History lists those rounds, oldest first.
	History []RetryRound
}

// RetryBudgetOf reads the budget headers of msg. Missing or malformed
// headers count as a fresh budget, never as an error: a message must not
// become undeliverable because of its retry headers.
func RetryBudgetOf(md message.Metadata) RetryBudget {
	var b RetryBudget
	b.Rounds, _ = strconv.Atoi(md.Get(KeyRetryRounds))
	b.Attempts, _ = strconv.Atoi(md.Get(KeyRetryAttempts))
	if b.Rounds < 0 || b.Attempts < 0 {
		return RetryBudget{}
	}
	if t, err := time.Parse(time.RFC3339Nano, md.Get(KeyRetryFirstFailure)); err == nil {
		b.FirstFailure = t
	}
	if h := md.Get(KeyRetryHistory); h != "" {
		_ = json.Unmarshal([]byte(h), &b.History)
	}
	return b
}

func (c RedeliveryConfig) withDefaults() RedeliveryConfig {
	if c.Delays == nil {
		c.Delays = slices.Clone(DefaultRedeliveryDelays)
	}
	for _, d := range c.Delays {
		if d <= 0 {
			panic(fmt.Sprintf("middleware: RedeliveryConfig.Delays must be positive, got %v", d))
		}
	}
	if c.MaxTotal == 0 {
		c.MaxTotal = DefaultRedeliveryMaxTotal
	}
	return c
}

// roundOutcome is what one failed round adds up to.
type roundOutcome struct {
	budget   RetryBudget
	attempts int       // of this round
	first    time.Time // first failure of the whole budget
	last     time.Time // last failure of this round
}

func outcomeOf(msg *message.Message, err error) roundOutcome {
	now := time.Now()
	o := roundOutcome{budget: RetryBudgetOf(msg.Metadata), attempts: 1, first: now, last: now}
	var re *RetryError
	if errors.As(err, &re) {
		o.attempts, o.first, o.last = re.Attempts, re.FirstFailure, re.LastFailure
	}
	if !o.budget.FirstFailure.IsZero() && o.budget.FirstFailure.Before(o.first) {
		o.first = o.budget.FirstFailure
	}
	return o
}

// total is the number of attempts of every round, this one included.
func (o roundOutcome) total() int { return o.budget.Attempts + o.attempts }

// round describes this round for the history.
func (o roundOutcome) round(err error, delay time.Duration) RetryRound {
	r := RetryRound{Attempts: o.attempts, Error: truncate(err.Error(), maxHistoryError), Reason: ErrorType(err), FailedAt: o.last.UTC()}
	if delay > 0 {
		r.Delay = delay.String()
	}
	return r
}

// history returns the rounds so far plus this one, as JSON.
func (o roundOutcome) history(err error, delay time.Duration) string {
	h := append(o.budget.History[:len(o.budget.History):len(o.budget.History)], o.round(err, delay))
	b, _ := json.Marshal(h)
	return string(b)
}

// redeliverLater hands msg, whose round ended as o, to the delayed tier
// when its budget allows. It
// returns handled true when it did (err is then nil on success, or the
// Redeliverer's error joined to the handler's, for a nack), false when the
// message must be dead-lettered (err is then the tier's [ErrTierFull], or
// nil when the budget is spent or the error permanent).
func redeliverLater(cfg *RedeliveryConfig, o roundOutcome, msg *message.Message, ctx context.Context, err error, obs Observer) (handled bool, _ error) {
	if cfg.Redeliverer == nil || IsPermanent(err) {
		return false, nil
	}
	if o.budget.Rounds >= len(cfg.Delays) {
		return false, nil
	}
	delay := cfg.Delays[o.budget.Rounds]
	if cfg.MaxTotal > 0 && time.Since(o.first)+delay > cfg.MaxTotal {
		return false, nil
	}
	cp := message.NewMessageWithContext(ctx, msg.UUID, msg.Payload)
	cp.Metadata = make(message.Metadata, len(msg.Metadata)+4)
	for k, v := range msg.Metadata {
		cp.Metadata[k] = v
	}
	cp.Metadata[KeyRetryRounds] = strconv.Itoa(o.budget.Rounds + 1)
	cp.Metadata[KeyRetryAttempts] = strconv.Itoa(o.total())
	cp.Metadata[KeyRetryFirstFailure] = o.first.UTC().Format(time.RFC3339Nano)
	cp.Metadata[KeyRetryHistory] = o.history(err, delay)
	if rerr := cfg.Redeliverer.Redeliver(ctx, cp, delay); rerr != nil {
		rerr = fmt.Errorf("middleware: schedule redelivery in %v: %w", delay, rerr)
		if errors.Is(rerr, ErrTierFull) {
			return false, rerr
		}
		return true, errors.Join(err, rerr)
	}
	if obs != nil {
		obs.Redelivered(RedeliveryInfo{Message: cp, Round: o.budget.Rounds + 2, Delay: delay, Err: err})
	}
	return true, nil
}
