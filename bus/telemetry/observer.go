package telemetry

import (
	"context"
	"log/slog"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/busline/busline/middleware"
	"github.com/busline/busline/schema"
)

// DeadLettered implements [middleware.Observer]: the dead letter marks
// the process span (error, busline.dlq.reason, an event), counts
// busline.dlq.messages and logs a warning.
func (h *Handler) DeadLettered(info middleware.DeadLetterInfo) {
	t := h.t
	ctx := info.Message.Context()
	if pc := procFromContext(ctx); pc != nil {
		pc.deadLetter = info.Reason
		if info.Err != nil {
			pc.dlqErr = info.Err.Error()
		}
	}
	if sp := trace.SpanFromContext(ctx); sp.IsRecording() {
		sp.SetAttributes(AttrDLQReason.String(info.Reason))
		sp.AddEvent(EventDeadLetter, trace.WithAttributes(
			AttrDLQReason.String(info.Reason),
			attribute.String("busline.dlq.topic", info.Topic),
			AttrAttempts.Int(attemptsOf(info)),
		))
	}
	if t.m != nil {
		attrs := []attribute.KeyValue{AttrDLQReason.String(info.Reason)}
		if et := info.Message.Metadata[schema.KeyType]; et != "" {
			attrs = append(attrs, semconv.CloudEventsEventType(et))
		}
		t.m.deadLettered.Add(ctx, 1, h.withAttrs(attrs...))
	}
	h.log(ctx, slog.LevelWarn, "bus: message dead-lettered", info.Message,
		slog.String("topic", h.topic),
		slog.String("dead_letter_topic", info.Topic),
		slog.String("reason", info.Reason),
		slog.Int("attempts", attemptsOf(info)),
		slog.Any("error", info.Err))
}

// Retried implements [middleware.Observer]: a span event, busline.retries
// and a debug line.
func (h *Handler) Retried(info middleware.RetryInfo) {
	t := h.t
	ctx := info.Message.Context()
	et := errorType(info.Err)
	if pc := procFromContext(ctx); pc != nil {
		pc.attempts = info.Attempt + 1
	}
	if sp := trace.SpanFromContext(ctx); sp.IsRecording() {
		sp.AddEvent(EventRetry, trace.WithAttributes(
			AttrAttempt.Int(info.Attempt),
			semconv.ErrorTypeKey.String(et),
			AttrRetryDelay.Float64(info.Delay.Seconds()),
		))
	}
	if t.m != nil {
		t.m.retries.Add(ctx, 1, h.withAttrs(semconv.ErrorTypeKey.String(et)))
	}
	h.log(ctx, slog.LevelDebug, "bus: handler attempt failed, retrying", info.Message,
		slog.Int("attempt", info.Attempt),
		slog.Duration("delay", info.Delay),
		slog.Any("error", info.Err))
}

// Redelivered implements [middleware.Observer]: a span event, the process
// span's error status and error.type (the round failed, though the message
// is acked), busline.redeliveries and an info line: the message left for
// the broker's delayed tier and comes back after the delay.
func (h *Handler) Redelivered(info middleware.RedeliveryInfo) {
	ctx := info.Message.Context()
	et := errorType(info.Err)
	if pc := procFromContext(ctx); pc != nil {
		// The round failed: its span and process duration say so.
		pc.redelivery, pc.redelErr = et, info.Err.Error()
	}
	if sp := trace.SpanFromContext(ctx); sp.IsRecording() {
		sp.AddEvent(EventRedelivery, trace.WithAttributes(
			AttrRedeliveryRound.Int(info.Round),
			semconv.ErrorTypeKey.String(et),
			AttrRetryDelay.Float64(info.Delay.Seconds()),
		))
	}
	if h.t.m != nil {
		h.t.m.redeliveries.Add(ctx, 1, h.withAttrs(semconv.ErrorTypeKey.String(et)))
	}
	h.log(ctx, slog.LevelInfo, "bus: handler failed, redelivering later", info.Message,
		slog.Int("round", info.Round),
		slog.Duration("delay", info.Delay),
		slog.Any("error", info.Err))
}

// Duplicate implements [middleware.Observer]: busline.dedup.state on the
// span, an event and busline.dedup.hits.
func (h *Handler) Duplicate(info middleware.DedupInfo) {
	ctx := info.Message.Context()
	state := AttrDedupState.String(info.State.String())
	if sp := trace.SpanFromContext(ctx); sp.IsRecording() {
		sp.SetAttributes(state)
		sp.AddEvent(EventDuplicate, trace.WithAttributes(state))
	}
	if h.t.m != nil {
		h.t.m.dedupHits.Add(ctx, 1, h.withAttrs(state))
	}
}

// DedupWaited implements [middleware.Observer]: a span event,
// busline.dedup.waits and one info line per message, however long it
// waits.
func (h *Handler) DedupWaited(info middleware.DedupInfo) {
	t := h.t
	ctx := info.Message.Context()
	if sp := trace.SpanFromContext(ctx); sp.IsRecording() {
		sp.AddEvent(EventDedupWait, trace.WithAttributes(AttrDedupState.String(info.State.String())))
	}
	if t.m != nil {
		t.m.dedupWaits.Add(ctx, 1, h.withAttrs())
	}
	h.log(ctx, slog.LevelInfo, "bus: message is in progress elsewhere, waiting for its dedup claim to end", info.Message,
		slog.String("topic", h.topic),
		slog.String("dedup_key", info.Key))
}

// DedupStoreFailed implements [middleware.Observer]: a warning.
func (h *Handler) DedupStoreFailed(info middleware.DedupInfo) {
	ctx := info.Message.Context()
	h.log(ctx, slog.LevelWarn, "bus: dedup store "+info.Op+" failed", info.Message,
		slog.String("dedup_key", info.Key),
		slog.Any("error", info.Err))
}

// Throttled implements [middleware.Observer]: a span event and
// busline.throttle.waits.
func (h *Handler) Throttled(info middleware.ThrottleInfo) {
	ctx := info.Message.Context()
	limit := AttrThrottleLimit.String(info.Limit)
	if sp := trace.SpanFromContext(ctx); sp.IsRecording() {
		sp.AddEvent(EventThrottle, trace.WithAttributes(limit, attribute.Float64("busline.throttle.waited", info.Waited.Seconds())))
	}
	if h.t.m != nil {
		h.t.m.throttleWaits.Add(ctx, 1, h.withAttrs(limit))
	}
}

// BreakerChanged implements [middleware.Observer]: the state
// busline.breaker.state reports, and an info line.
func (h *Handler) BreakerChanged(info middleware.BreakerInfo) {
	h.breaker.Store(int64(info.To))
	// Called under the breaker's lock: log without blocking work.
	h.t.logger.LogAttrs(context.Background(), slog.LevelInfo, "bus: circuit breaker state changed",
		slog.String("handler", h.name), slog.String("from", info.From.String()), slog.String("to", info.To.String()))
}

func attemptsOf(info middleware.DeadLetterInfo) int {
	if n, err := strconv.Atoi(info.Message.Metadata[middleware.KeyDLQAttempts]); err == nil {
		return n
	}
	return 1
}

// Observe makes h observe what the steps of cfg do, besides the observers
// set before: the stack's and each step's own.
func (h *Handler) Observe(cfg *middleware.StackConfig) {
	cfg.Observer = middleware.Observers(h, cfg.Observer)
	for _, step := range []*middleware.Observer{
		&cfg.DeadLetter.Observer, &cfg.Retry.Observer, &cfg.Dedup.Observer,
		&cfg.Throttle.Observer, &cfg.Breaker.Observer,
	} {
		if *step != nil {
			*step = middleware.Observers(h, *step)
		}
	}
}
