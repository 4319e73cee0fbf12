package telemetry

import (
	"context"
	"log/slog"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/trace"

	"github.com/busline/busline/middleware"
	"github.com/busline/busline/schema"
)

// LogAttrs returns the attributes that tie a log line to the message
// being handled in ctx: correlation_id, message_id (the handled message,
// the causation parent of what it publishes), trace_id and span_id.
// Attributes ctx does not carry are left out. The bus's Logger adds them.
func LogAttrs(ctx context.Context) []slog.Attr {
	var attrs []slog.Attr
	if v := middleware.CorrelationIDFromContext(ctx); v != "" {
		attrs = append(attrs, slog.String("correlation_id", v))
	}
	if v := middleware.CausationIDFromContext(ctx); v != "" {
		attrs = append(attrs, slog.String("message_id", v))
	}
	return appendTraceAttrs(ctx, attrs)
}

// Logger returns base with the [LogAttrs] of ctx, or base itself when ctx
// carries none: the bus's Logger.
func Logger(base *slog.Logger, ctx context.Context) *slog.Logger {
	attrs := LogAttrs(ctx)
	if len(attrs) == 0 {
		return base
	}
	args := make([]any, len(attrs))
	for i, a := range attrs {
		args[i] = a
	}
	return base.With(args...)
}

func appendTraceAttrs(ctx context.Context, attrs []slog.Attr) []slog.Attr {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		attrs = append(attrs, slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return attrs
}

// messageLogAttrs are the attributes of a log line about msg: its id and
// correlation id from its metadata (middleware.RootCorrelation when it has
// none), and the trace of ctx.
func messageLogAttrs(ctx context.Context, msg *message.Message) []slog.Attr {
	attrs := make([]slog.Attr, 0, 10)
	id := msg.Metadata[schema.KeyID]
	if id == "" {
		id = msg.UUID
	}
	attrs = append(attrs, slog.String("message_id", id))
	// A message without a correlation id starts its own (as the
	// correlation middleware decides).
	corr := schema.CorrelationID(msg.Metadata)
	if corr == "" {
		corr = middleware.RootCorrelation(msg)
	}
	attrs = append(attrs, slog.String("correlation_id", corr))
	return appendTraceAttrs(ctx, attrs)
}

// log logs a line about msg at level, when the logger takes it: the
// message's attributes, the handler's name, then attrs.
func (h *Handler) log(ctx context.Context, level slog.Level, text string, msg *message.Message, attrs ...slog.Attr) {
	l := h.t.logger
	if !l.Enabled(ctx, level) {
		return
	}
	all := append(messageLogAttrs(ctx, msg), slog.String("handler", h.name))
	l.LogAttrs(ctx, level, text, append(all, attrs...)...)
}
