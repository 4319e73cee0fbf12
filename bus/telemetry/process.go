package telemetry

import (
	"context"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/busline/busline/internal/delivery"
	"github.com/busline/busline/middleware"
	"github.com/busline/busline/schema"
)

// Handler is the telemetry of one handler: its outermost middleware
// ([Handler.Middleware]) and the [middleware.Observer] of its stack.
// It is safe for concurrent use.
type Handler struct {
	t                  *Telemetry
	name, topic, group string

	processName string
	startAttrs  []attribute.KeyValue

	attrs        []attribute.KeyValue // system, operation name, destination[, group]
	consumedOK   []metric.AddOption
	processOK    []metric.RecordOption
	bus          []attribute.KeyValue // attrs + busline.handler.name
	busRecordSet []metric.RecordOption
	breakerOpt   metric.ObserveOption

	breaker atomic.Int64
	errs    errCache // of attrs
}

var _ middleware.Observer = (*Handler)(nil)

// Handler returns the telemetry of handler name, which consumes topic as
// group, and adds it to what is polled and observed. Call it once per
// handler.
func (t *Telemetry) Handler(name, topic, group string) *Handler {
	h := &Handler{t: t, name: name, topic: topic, group: group}
	d := t.desc.ConsumeDestination(topic, group)
	attrs := []attribute.KeyValue{t.system, semconv.MessagingOperationName("process"), semconv.MessagingDestinationName(d.Name)}
	if d.Group != "" {
		attrs = append(attrs, semconv.MessagingConsumerGroupName(d.Group))
	}
	h.attrs = attrs
	h.errs.base = attrs
	h.processName = "process " + d.Name
	start := append(attrs[:len(attrs):len(attrs)], semconv.MessagingOperationTypeProcess, AttrHandlerName.String(name))
	h.startAttrs = append(start, t.processServer...)
	set := metric.WithAttributeSet(attribute.NewSet(attrs...))
	h.consumedOK = []metric.AddOption{set}
	h.processOK = []metric.RecordOption{set}
	h.bus = append(attrs[:len(attrs):len(attrs)], AttrHandlerName.String(name))
	bset := metric.WithAttributeSet(attribute.NewSet(h.bus...))
	h.busRecordSet = []metric.RecordOption{bset}
	h.breakerOpt = bset
	t.observe(h)
	return h
}

// withAttrs returns options for a busline.* metric of this handler with
// extra attributes (not cached: these record rare events).
func (h *Handler) withAttrs(extra ...attribute.KeyValue) metric.MeasurementOption {
	return metric.WithAttributeSet(attribute.NewSet(append(h.bus[:len(h.bus):len(h.bus)], extra...)...))
}

// procCtx is the context of a message while its handler runs: the process
// span's context plus what the observer learns, and the state the
// middleware needs when the handler returns. It is one allocation per
// message.
type procCtx struct {
	context.Context
	deadLetter string // busline.dlq.reason when dead-lettered
	dlqErr     string
	redelivery string // error.type when handed to the delayed tier
	redelErr   string
	attempts   int

	start time.Time
	span  trace.Span // nil: tracing off
}

type procKey struct{}

// Value implements context.Context.
func (c *procCtx) Value(key any) any {
	if key == (procKey{}) {
		return c
	}
	return c.Context.Value(key)
}

func procFromContext(ctx context.Context) *procCtx {
	pc, _ := ctx.Value(procKey{}).(*procCtx)
	return pc
}

// Middleware returns the outermost middleware of the handler: the process
// span (a CONSUMER span, child of and linked to the producer's span), the
// consumer metrics and the log line of a failure.
//
// The work is done in begin and end, which return before the handler runs
// or after it returned: the closure's own frame stays small. Watermill
// runs each message in a new goroutine, whose stack starts small; every
// byte kept on the stack while the SDK's span start or the handler's stack
// runs deeper can make the goroutine grow (copy) its stack once more per
// message.
func (h *Handler) Middleware() message.HandlerMiddleware {
	t := h.t
	if t.tracer == nil && t.m == nil {
		return func(next message.HandlerFunc) message.HandlerFunc {
			return func(msg *message.Message) ([]*message.Message, error) {
				out, err := next(msg)
				if err != nil {
					h.logFailure(msg, err)
				}
				return out, err
			}
		}
	}
	return func(next message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			pc := h.begin(msg)
			out, err := next(msg)
			h.end(pc, msg, err)
			return out, err
		}
	}
}

// begin starts the process span and counts the message consumed; msg's
// context becomes the returned procCtx.
func (h *Handler) begin(msg *message.Message) *procCtx {
	t := h.t
	orig := msg.Context()
	pc := &procCtx{Context: orig, start: time.Now()}
	if t.tracer != nil {
		pc.Context, pc.span = h.startProcess(orig, msg)
	}
	if t.m != nil {
		n := int64(1)
		if mem := delivery.MemberFromContext(orig); mem != nil && mem.Batch.Carried() != nil {
			n = int64(mem.Batch.Size()) // a carrier of a batch (Kafka batch delivery)
		}
		t.m.consumed.Inst().Add(context.Background(), n, h.consumedOK...)
	}
	msg.SetContext(pc)
	return pc
}

// end ends the process span, records the process and end-to-end
// durations, and logs a failure.
func (h *Handler) end(pc *procCtx, msg *message.Message, err error) {
	t := h.t
	var et, desc string
	switch {
	case err != nil:
		et, desc = errorType(err), err.Error()
	case pc.deadLetter != "":
		et, desc = pc.deadLetter, "dead-lettered: "+pc.dlqErr
	case pc.redelivery != "":
		et, desc = pc.redelivery, "redelivering later: "+pc.redelErr
	}
	if sp := pc.span; sp != nil {
		if pc.attempts > 1 {
			sp.SetAttributes(AttrAttempts.Int(pc.attempts))
		}
		if et != "" {
			sp.SetStatus(codes.Error, desc)
			sp.SetAttributes(semconv.ErrorTypeKey.String(et))
		}
		sp.End()
	}
	if t.m != nil {
		ctx := context.Background() // exemplars: off the hot path
		now := time.Now()
		d := now.Sub(pc.start).Seconds()
		if et == "" {
			t.m.processDuration.Inst().Record(ctx, d, h.processOK...)
		} else {
			t.m.processDuration.Inst().Record(ctx, d, h.errs.get(et).record...)
		}
		if age, ok := messageAge(msg.Metadata, now); ok {
			t.m.endToEnd.Record(ctx, age.Seconds(), h.busRecordSet...)
		}
	}
	if err != nil {
		h.logFailure(msg, err)
	}
}

// startProcess starts the process span of msg. The options are built by
// processOptions, whose large frame (attribute values) is gone by the time
// the SDK runs.
func (h *Handler) startProcess(ctx context.Context, msg *message.Message) (context.Context, trace.Span) {
	a := getSpanArgs()
	parent := h.processOptions(ctx, msg, a)
	pctx, sp := h.t.tracer.Start(parent, h.processName, a.opts...)
	a.release()
	return pctx, sp
}

// processOptions fills a with the process span's start options and
// returns its parent. Its parent is the producer's span extracted from
// the metadata (unless an ambient span is in ctx or NewRootOnProcess was
// set) and it always links to it. Every attribute is given at start, so
// samplers see them.
func (h *Handler) processOptions(ctx context.Context, msg *message.Message, a *spanArgs) context.Context {
	t := h.t
	a.opts = append(a.opts, consumerKind)
	parent := ctx
	if t.hasCreationContext(msg.Metadata) || msg.Metadata["baggage"] != "" {
		ectx := t.prop.Extract(ctx, propagation.MapCarrier(msg.Metadata))
		if sc := trace.SpanContextFromContext(ectx); sc.IsValid() {
			a.opts = append(a.opts, trace.WithLinks(trace.Link{SpanContext: sc}))
		}
		switch {
		case trace.SpanContextFromContext(ctx).IsValid(): // an ambient span: stay its child
			parent = baggage.ContextWithBaggage(ctx, baggage.FromContext(ectx))
		case t.processRoot:
			parent = ectx
			a.opts = append(a.opts, newRoot)
		default:
			parent = ectx
		}
	}
	f := t.desc.MessageFacts(ctx, msg)
	attrs := appendMessageAttrs(append(a.attrs, h.startAttrs...), msg, f.Key)
	if mem := delivery.MemberFromContext(ctx); mem != nil && mem.Batch.Carried() != nil {
		attrs = append(attrs, semconv.MessagingBatchMessageCount(mem.Batch.Size()))
	}
	if f.HasOffset {
		attrs = append(attrs, semconv.MessagingDestinationPartitionID(strconv.Itoa(int(f.Partition))),
			semconv.MessagingKafkaOffset(int(f.Offset)))
	}
	if f.RoutingKey != "" {
		attrs = append(attrs, semconv.MessagingRabbitMQDestinationRoutingKey(f.RoutingKey))
	}
	if f.HasDeliveryTag {
		attrs = append(attrs, semconv.MessagingRabbitMQMessageDeliveryTag(int(f.DeliveryTag)))
	}
	a.attrs = attrs
	a.opts = append(a.opts, trace.WithAttributes(attrs...))
	return parent
}

// messageAge is how long ago the message was created (ce_time) or
// published (busline_sent_at).
func messageAge(md message.Metadata, now time.Time) (time.Duration, bool) {
	v := md[schema.KeyTime]
	if v == "" {
		v = md[KeySentAt]
	}
	if v == "" {
		return 0, false
	}
	ts, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return 0, false
	}
	d := now.Sub(ts)
	if d < 0 {
		d = 0
	}
	return d, true
}

// logFailure logs an error that escapes the stack: the message is nacked
// and delivered again.
func (h *Handler) logFailure(msg *message.Message, err error) {
	ctx := msg.Context()
	level := slog.LevelWarn
	if ctx.Err() != nil {
		level = slog.LevelDebug // shutdown: redelivered later, expected
	}
	h.log(ctx, level, "bus: handling failed, the message will be delivered again", msg,
		slog.String("topic", h.topic),
		slog.String("error_type", errorType(err)),
		slog.Any("error", err))
}
