package middleware

import (
	"github.com/busline/busline/internal/delivery"

	"context"
	"errors"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/schema"
)

// Dead-letter metadata keys. [DeadLetter] adds them to the original
// metadata of a dead-lettered message; [Replay] strips them again.
const (
	// KeyDLQReason is the machine-readable reason code (see [ErrorType]).
	KeyDLQReason = schema.PrivatePrefix + "dlq_reason"
	// KeyDLQError is the error text, truncated to DeadLetterConfig.MaxErrorLength.
	KeyDLQError = schema.PrivatePrefix + "dlq_error"
	// KeyDLQHandler is the name of the handler that failed.
	KeyDLQHandler = schema.PrivatePrefix + "dlq_handler"
	// KeyDLQTopic is the topic the message was consumed from: where [Replay] sends it.
	KeyDLQTopic = schema.PrivatePrefix + "dlq_topic"
	// KeyDLQAttempts is the number of attempts made, in decimal.
	KeyDLQAttempts = schema.PrivatePrefix + "dlq_attempts"
	// KeyDLQFirstFailure is when the first attempt failed (RFC 3339, nanoseconds, UTC).
	KeyDLQFirstFailure = schema.PrivatePrefix + "dlq_first_failure"
	// KeyDLQLastFailure is when the last attempt failed (RFC 3339, nanoseconds, UTC).
	KeyDLQLastFailure = schema.PrivatePrefix + "dlq_last_failure"
	// KeyDLQRounds is the number of rounds (the first delivery and each
	// delayed redelivery) the message went through, in decimal; the rounds
	// themselves are in busline_retry_history.
	KeyDLQRounds = schema.PrivatePrefix + "dlq_rounds"
	// KeyReplayCount counts how often a message was replayed from the
	// dead-letter destination; [Replay] sets it.
	KeyReplayCount = schema.PrivatePrefix + "replay_count"

	dlqPrefix = schema.PrivatePrefix + "dlq_"
)

// DeadLetterConfig configures [DeadLetter].
type DeadLetterConfig struct {
	// Publisher publishes dead letters. Required: DeadLetter panics when it
	// is nil. Publish is called with the failed message, whose context is the
	// message's own (live) context.
	Publisher message.Publisher
	// Topic is the dead-letter topic. When both Topic and TopicFunc are
	// empty, the topic is the consumed topic with ".dlq" appended, or
	// "busline.dlq" when the consumed topic is unknown (not under a router).
	Topic string
	// TopicFunc, when set, picks the dead-letter topic from the consumed
	// topic (message.SubscribeTopicFromCtx; "" outside a router). It takes
	// precedence over Topic.
	TopicFunc func(topic string) string
	// MaxErrorLength bounds the error text stored in busline_dlq_error, in
	// bytes (cut at a rune boundary). Zero means 1024; negative means the
	// text is not stored.
	MaxErrorLength int
	// Redelivery configures the delayed tier between the in-process retries
	// and the dead-letter topic; its zero value has none.
	Redelivery RedeliveryConfig
	// Observer, when set, is told of each dead letter published
	// (DeadLettered) and each message handed to the delayed tier
	// (Redelivered). Nil means none.
	Observer Observer
}

// DeadLetterInfo describes a dead-lettered message for
// [Observer].DeadLettered.
type DeadLetterInfo struct {
	// Message is the dead letter as published (payload and UUID of the
	// original, metadata with the busline_dlq_* keys).
	Message *message.Message
	// Topic is the dead-letter topic it was published to.
	Topic string
	// Reason is the reason code stored in busline_dlq_reason.
	Reason string
	// Err is the error that made the message a dead letter.
	Err error
}

// DeadLetter returns a middleware that moves a message whose handling
// failed to a dead-letter topic and then reports success, so the router
// acks it. It must sit outside [Retry] so that it sees the final error.
//
// The dead letter has the original UUID, the original payload byte for byte
// and the original metadata, plus busline_dlq_reason (the [ErrorType] of the
// error), busline_dlq_error, busline_dlq_handler, busline_dlq_topic,
// busline_dlq_attempts, busline_dlq_first_failure and
// busline_dlq_last_failure (from a [*RetryError] when the error is one, else
// 1 attempt at the time of failure). Messages the failing handler returned
// are dropped, never published.
//
// With a delayed tier (DeadLetterConfig.Redelivery with a Redeliverer), a
// message whose error is not permanent and whose budget is not spent is not
// dead-lettered: a copy with updated budget headers (busline_retry_rounds,
// busline_retry_attempts, busline_retry_first_failure,
// busline_retry_history) is handed to the Redeliverer for the next round
// after Delays[round-1], and the message is acked. The budget is the number
// of delays and RedeliveryConfig.MaxTotal from the first failure; when it is
// spent, the dead letter reports the totals of every round
// (busline_dlq_attempts, busline_dlq_first_failure, busline_dlq_rounds) and
// the rounds in busline_retry_history. When the Redeliverer fails, the
// message is nacked as for a failed dead-letter publish.
//
// Not dead-lettered, but returned so that the router nacks the message for a
// later redelivery: errors for which [IsRedelivery] holds (context
// cancellation, breaker rejection, concurrent duplicates, dedup store
// failures) and any error once the message's own context is done (shutdown).
//
// When publishing the dead letter fails, DeadLetter returns an error
// joining the handler's error and the publish error at once: the message is
// nacked, nothing is lost. It never waits itself: [NackDelay], outside it
// in [Stack], delays every nack.
func DeadLetter(cfg DeadLetterConfig) message.HandlerMiddleware {
	cfg = cfg.withDefaults()
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			orig := msg.Context()
			out, err := h(msg)
			if err == nil {
				return out, nil
			}
			return nil, deadLetterFailed(&cfg, msg, orig, err)
		}
	}
}

func (cfg DeadLetterConfig) withDefaults() DeadLetterConfig {
	if cfg.Publisher == nil {
		panic("middleware: DeadLetterConfig.Publisher is nil")
	}
	if cfg.MaxErrorLength == 0 {
		cfg.MaxErrorLength = 1024
	}
	if cfg.Redelivery.Redeliverer != nil {
		cfg.Redelivery = cfg.Redelivery.withDefaults()
	}
	return cfg
}

// deadLetterFailed is [DeadLetter] after the handling failed with err: it
// restores msg's context orig, and returns err for a redelivery, or nil
// once msg was dead-lettered.
func deadLetterFailed(cfg *DeadLetterConfig, msg *message.Message, orig context.Context, err error) error {
	msg.SetContext(orig)
	if orig.Err() != nil || IsRedelivery(err) {
		return err
	}
	if m := delivery.MemberFromContext(orig); m != nil && m.Batch.Carried() != nil {
		// A carrier of a batch (Kafka batch delivery) holds no event of
		// its own: nacked, its records come again one by one, each
		// dead-lettered on its own if it fails.
		return err
	}
	o := outcomeOf(msg, err) // this round and the earlier ones
	handled, rerr := redeliverLater(&cfg.Redelivery, o, msg, orig, err, cfg.Observer)
	if handled {
		return rerr
	}
	if rerr != nil { // the delayed tier is full: dead-letter now, with both errors
		err = &tierFullError{err: err, tier: rerr}
	}
	return deadLetter(cfg, o, msg, orig, err)
}

func deadLetter(cfg *DeadLetterConfig, o roundOutcome, msg *message.Message, ctx context.Context, err error) error {
	srcTopic := message.SubscribeTopicFromCtx(ctx)
	topic := cfg.Topic
	switch {
	case cfg.TopicFunc != nil:
		topic = cfg.TopicFunc(srcTopic)
	case topic == "" && srcTopic != "":
		topic = srcTopic + ".dlq"
	case topic == "":
		topic = "busline.dlq"
	}
	reason := ErrorType(err)
	if errors.Is(err, ErrTierFull) {
		reason = ReasonTierFull
	} else if reason == ReasonHandlerError && o.total() > 1 {
		// Each round was one attempt, but there were several rounds.
		reason = ReasonRetriesExhausted
	}

	dl := message.NewMessageWithContext(ctx, msg.UUID, msg.Payload)
	dl.Metadata = make(message.Metadata, len(msg.Metadata)+9)
	for k, v := range msg.Metadata {
		dl.Metadata[k] = v
	}
	if dl.Metadata[schema.KeyCorrelationID] == "" {
		// A message that started its correlation: the copy says so.
		corr := CorrelationIDFromContext(ctx)
		if corr == "" { // no Correlation step inside this one
			corr = RootCorrelation(msg)
		}
		dl.Metadata[schema.KeyCorrelationID] = corr
	}
	dl.Metadata[KeyDLQReason] = reason
	if cfg.MaxErrorLength > 0 {
		dl.Metadata[KeyDLQError] = truncate(err.Error(), cfg.MaxErrorLength)
	}
	dl.Metadata[KeyDLQHandler] = message.HandlerNameFromCtx(ctx)
	dl.Metadata[KeyDLQTopic] = srcTopic
	dl.Metadata[KeyDLQAttempts] = strconv.Itoa(o.total())
	dl.Metadata[KeyDLQFirstFailure] = o.first.UTC().Format(time.RFC3339Nano)
	dl.Metadata[KeyDLQLastFailure] = o.last.UTC().Format(time.RFC3339Nano)
	dl.Metadata[KeyDLQRounds] = strconv.Itoa(o.budget.Rounds + 1)
	if o.budget.Rounds > 0 {
		dl.Metadata[KeyRetryHistory] = o.history(err, 0)
	}

	if perr := cfg.Publisher.Publish(topic, dl); perr != nil {
		return errors.Join(err, &deadLetterPublishError{topic: topic, err: perr})
	}
	if cfg.Observer != nil {
		cfg.Observer.DeadLettered(DeadLetterInfo{Message: dl, Topic: topic, Reason: reason, Err: err})
	}
	return nil
}

type deadLetterPublishError struct {
	topic string
	err   error
}

func (e *deadLetterPublishError) Error() string {
	return "middleware: publish dead letter to " + e.topic + ": " + e.err.Error()
}
func (e *deadLetterPublishError) Unwrap() error { return e.err }

// truncate cuts s to at most n bytes at a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = "…"
	cut := n - len(mark)
	if cut <= 0 {
		cut = n
	}
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	if cut == n {
		return s[:cut]
	}
	return s[:cut] + mark
}

// Replay turns a dead letter back into a message for its original topic. It
// returns that topic (busline_dlq_topic) and a copy with the same UUID,
// payload and metadata minus the busline_dlq_* keys and the delayed tier's
// busline_retry_* budget (a replay starts a fresh budget), and with
// busline_replay_count incremented. The UUID (and so ce_id and the
// correlation) is kept: the failed handling released its dedup claim, so
// [Dedup] processes the replay instead of treating it as a duplicate.
// Replay returns an error when msg is not a dead letter or its original
// topic is unknown. The caller subscribes to the dead-letter topic and
// publishes the result; the copy has no context.
func Replay(msg *message.Message) (topic string, out *message.Message, err error) {
	if msg == nil || msg.Metadata.Get(KeyDLQReason) == "" {
		return "", nil, errors.New("middleware: replay: not a dead letter (no " + KeyDLQReason + ")")
	}
	topic = msg.Metadata.Get(KeyDLQTopic)
	if topic == "" {
		return "", nil, errors.New("middleware: replay: dead letter has no original topic (" + KeyDLQTopic + ")")
	}
	out = message.NewMessage(msg.UUID, append(message.Payload(nil), msg.Payload...))
	for k, v := range msg.Metadata {
		if strings.HasPrefix(k, dlqPrefix) || strings.HasPrefix(k, retryPrefix) {
			continue
		}
		out.Metadata[k] = v
	}
	n, _ := strconv.Atoi(msg.Metadata.Get(KeyReplayCount))
	out.Metadata[KeyReplayCount] = strconv.Itoa(n + 1)
	return topic, out, nil
}
