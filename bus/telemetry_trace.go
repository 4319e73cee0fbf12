package bus

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
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

	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/bus/memory"
	"github.com/busline/busline/internal/delivery"
	"github.com/busline/busline/schema"
)

// Busline's own span and metric attribute keys (never new messaging.*
// keys).
const (
	AttrHandlerName   = attribute.Key("busline.handler.name")
	AttrSchemaVersion = attribute.Key("busline.schema.version")
	AttrDLQReason     = attribute.Key("busline.dlq.reason")
	AttrAttempt       = attribute.Key("busline.attempt")
	AttrAttempts      = attribute.Key("busline.attempts")
	AttrRetryDelay    = attribute.Key("busline.retry.delay")
	AttrDedupState    = attribute.Key("busline.dedup.state")
	AttrThrottleLimit = attribute.Key("busline.throttle.limit")
	AttrQueueName     = attribute.Key("busline.queue.name")
)

// Span event names.
const (
	EventRetry      = "busline.retry"
	EventDeadLetter = "busline.dead_letter"
	EventDuplicate  = "busline.duplicate"
	EventThrottle   = "busline.throttle_wait"
	EventDedupWait  = "busline.dedup_wait"
)

// maxTopicCache bounds the per-topic attribute cache of the publisher;
// topics beyond it get their attributes built on each publish.
const maxTopicCache = 1024

// topicTel is what the publisher precomputes for one topic.
type topicTel struct {
	sendName   string
	startAttrs []attribute.KeyValue // + operation type
	spanAttrs  []attribute.KeyValue // startAttrs + server and client
	sentOK     []metric.AddOption
	durOK      []metric.RecordOption
	attrs      []attribute.KeyValue // system, operation name, destination

	mu   sync.Mutex
	errs map[string]*errOpts
}

type errOpts struct {
	add    []metric.AddOption
	record []metric.RecordOption
}

func (t *telemetry) topic(name string) *topicTel {
	if v, ok := t.topics.Load(name); ok {
		return v.(*topicTel)
	}
	dest := name
	if t.broker == BrokerAMQP {
		dest = amqp.ExchangeName(name) // fanout: no routing key
	}
	attrs := []attribute.KeyValue{
		t.system,
		semconv.MessagingOperationName(t.sendOpName),
		semconv.MessagingDestinationName(dest),
	}
	startAttrs := append(attrs[:3:3], semconv.MessagingOperationTypeSend)
	tt := &topicTel{
		sendName:   t.sendOpName + " " + dest,
		startAttrs: startAttrs,
		spanAttrs:  append(startAttrs[:len(startAttrs):len(startAttrs)], t.sendServer...),
		sentOK:     []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attrs...))},
		durOK:      []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(startAttrs...))},
		attrs:      attrs,
		errs:       make(map[string]*errOpts),
	}
	if t.topicCount.Load() < maxTopicCache {
		if v, loaded := t.topics.LoadOrStore(name, tt); loaded {
			return v.(*topicTel)
		}
		t.topicCount.Add(1)
	}
	return tt
}

func (tt *topicTel) errOpts(et string) *errOpts {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	if e := tt.errs[et]; e != nil {
		return e
	}
	a := append(tt.attrs[:len(tt.attrs):len(tt.attrs)], semconv.ErrorTypeKey.String(et))
	d := append(a[:len(a):len(a)], semconv.MessagingOperationTypeSend)
	e := &errOpts{
		add:    []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(a...))},
		record: []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(d...))},
	}
	if len(tt.errs) < 64 {
		tt.errs[et] = e
	}
	return e
}

// instrumentedPublisher starts a send span per message, injects its
// context into the message's metadata, and counts and times each Publish.
type instrumentedPublisher struct {
	next message.Publisher
	t    *telemetry
}

// Publish implements message.Publisher.
func (p *instrumentedPublisher) Publish(topic string, msgs ...*message.Message) error {
	t := p.t
	tt := t.topic(topic)
	var start time.Time
	if t.m != nil {
		start = time.Now()
	}
	var buf [4]trace.Span
	spans := buf[:0]
	for _, m := range msgs {
		if m.Metadata == nil {
			m.Metadata = make(message.Metadata, 4)
		}
		if t.m != nil && m.Metadata[schema.KeyTime] == "" && m.Metadata[KeySentAt] == "" {
			m.Metadata[KeySentAt] = time.Now().UTC().Format(time.RFC3339Nano)
		}
		if t.tracer != nil {
			spans = append(spans, t.startSend(m, tt))
		}
	}
	err := p.next.Publish(topic, msgs...)
	var et string
	if err != nil {
		et = publishErrorType(err)
	}
	for _, sp := range spans {
		if err != nil {
			sp.SetStatus(codes.Error, err.Error())
			sp.SetAttributes(semconv.ErrorTypeKey.String(et))
		}
		sp.End()
	}
	if t.m != nil {
		ctx := context.Background()
		d := time.Since(start).Seconds()
		if err == nil {
			t.m.sent.Inst().Add(ctx, int64(len(msgs)), tt.sentOK...)
			t.m.opDuration.Inst().Record(ctx, d, tt.durOK...)
		} else {
			e := tt.errOpts(et)
			t.m.sent.Inst().Add(ctx, int64(len(msgs)), e.add...)
			t.m.opDuration.Inst().Record(ctx, d, e.record...)
		}
	}
	return err
}

// Close implements message.Publisher.
func (p *instrumentedPublisher) Close() error { return p.next.Close() }

// startSend starts the send span of m. A message with no creation context
// gets the span's, and the span is a PRODUCER; one that has a creation
// context already (forwarded, dead-lettered, replayed) keeps it, and the
// span is a CLIENT span linked to it.
func (t *telemetry) startSend(m *message.Message, tt *topicTel) trace.Span {
	ctx := m.Context()
	carrier := propagation.MapCarrier(m.Metadata)
	a := getSpanArgs()
	defer putSpanArgs(a)
	a.attrs = appendMessageAttrs(append(a.attrs, tt.spanAttrs...), m, t.broker == BrokerKafka)
	if t.hasCreationContext(m.Metadata) {
		a.opts = append(a.opts, clientKind, a.attrsOption())
		if sc := trace.SpanContextFromContext(t.prop.Extract(context.Background(), carrier)); sc.IsValid() {
			a.opts = append(a.opts, trace.WithLinks(trace.Link{SpanContext: sc}))
		}
		_, sp := t.tracer.Start(ctx, tt.sendName, a.opts...)
		return sp
	}
	a.opts = append(a.opts, producerKind, a.attrsOption())
	sctx, sp := t.tracer.Start(ctx, tt.sendName, a.opts...)
	t.prop.Inject(sctx, carrier)
	return sp
}

var (
	producerKind = trace.WithSpanKind(trace.SpanKindProducer)
	clientKind   = trace.WithSpanKind(trace.SpanKindClient)
	consumerKind = trace.WithSpanKind(trace.SpanKindConsumer)
	newRoot      = trace.WithNewRoot()
)

func (t *telemetry) hasCreationContext(md message.Metadata) bool {
	for _, f := range t.ctxFields {
		if md[f] != "" {
			return true
		}
	}
	return false
}

// appendMessageAttrs appends the attributes of one message, for send and
// process spans.
func appendMessageAttrs(attrs []attribute.KeyValue, m *message.Message, kafkaKey bool) []attribute.KeyValue {
	md := m.Metadata
	id := md[schema.KeyID]
	if id == "" {
		id = m.UUID
	}
	attrs = append(attrs, semconv.MessagingMessageID(id))
	if v := schema.CorrelationID(md); v != "" {
		attrs = append(attrs, semconv.MessagingMessageConversationID(v))
	}
	if v := md[schema.KeyType]; v != "" {
		attrs = append(attrs, semconv.CloudEventsEventType(v))
	}
	if v := md[schema.KeySource]; v != "" {
		attrs = append(attrs, semconv.CloudEventsEventSource(v))
	}
	if v := md[schema.KeyDataVersion]; v != "" {
		if n, err := strconv.Atoi(v); err == nil {
			attrs = append(attrs, AttrSchemaVersion.Int(n))
		} else {
			attrs = append(attrs, AttrSchemaVersion.String(v))
		}
	}
	if v := md[schema.KeyPartitionKey]; v != "" && kafkaKey { // the record key
		attrs = append(attrs, semconv.MessagingKafkaMessageKey(v))
	}
	return attrs
}

// spanArgs are the reusable per-span buffers: every attribute is given at
// span start (samplers see them, and the span grows its attribute slice
// once). The SDK copies both slices during Start and keeps neither.
type spanArgs struct {
	attrs []attribute.KeyValue
	opts  []trace.SpanStartOption

	// withAttrs[n] is trace.WithAttributes(attrs[:n]...), boxed once: an
	// option holds the slice, not a copy, so the boxed option of the
	// pooled backing array is reused instead of allocated per span.
	withAttrs [spanArgsCap + 1]trace.SpanStartOption
}

const spanArgsCap = 24

var spanArgsPool = sync.Pool{New: func() any {
	return &spanArgs{attrs: make([]attribute.KeyValue, 0, spanArgsCap), opts: make([]trace.SpanStartOption, 0, 4)}
}}

func getSpanArgs() *spanArgs { return spanArgsPool.Get().(*spanArgs) }

// attrsOption returns trace.WithAttributes(a.attrs...).
func (a *spanArgs) attrsOption() trace.SpanStartOption {
	n := len(a.attrs)
	if cap(a.attrs) != spanArgsCap { // grown past the pooled array
		return trace.WithAttributes(a.attrs...)
	}
	if a.withAttrs[n] == nil {
		a.withAttrs[n] = trace.WithAttributes(a.attrs[:n:spanArgsCap]...)
	}
	return a.withAttrs[n]
}

func putSpanArgs(a *spanArgs) {
	if cap(a.attrs) != spanArgsCap { // grown: the boxed options hold the old array
		a.attrs = make([]attribute.KeyValue, 0, spanArgsCap)
		a.withAttrs = [spanArgsCap + 1]trace.SpanStartOption{}
	}
	clear(a.attrs)
	clear(a.opts)
	a.attrs, a.opts = a.attrs[:0], a.opts[:0]
	spanArgsPool.Put(a)
}

// publishErrorType is the error.type of a failed publish.
func publishErrorType(err error) string {
	switch {
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, memory.ErrQueueFull):
		return "queue_full"
	case errors.Is(err, memory.ErrClosed), errors.Is(err, kafka.ErrClosed), errors.Is(err, amqp.ErrClosed):
		return "closed"
	}
	return semconv.ErrorType(err).Value.AsString()
}

// handlerTel is what the telemetry precomputes for one handler.
type handlerTel struct {
	name, topic, group string
	queue              string // RabbitMQ queue, for depth
	dest               string

	processName string
	startAttrs  []attribute.KeyValue

	attrs        []attribute.KeyValue // system, operation name, destination[, group]
	consumedOK   []metric.AddOption
	processOK    []metric.RecordOption
	bus          []attribute.KeyValue // attrs + busline.handler.name
	busRecordSet []metric.RecordOption
	breakerOpt   metric.ObserveOption

	breaker atomic.Int64

	mu   sync.Mutex
	errs map[string]*errOpts
}

func newHandlerTel(t *telemetry, name, topic, group string) *handlerTel {
	h := &handlerTel{name: name, topic: topic, group: group, dest: topic, errs: make(map[string]*errOpts)}
	attrs := []attribute.KeyValue{t.system, semconv.MessagingOperationName("process")}
	if t.broker == BrokerAMQP {
		// {exchange}:{routing key}:{queue}; the routing key is empty (fanout).
		h.queue = amqp.QueueName(topic, group)
		h.dest = amqp.ExchangeName(topic) + ":" + h.queue
		attrs = append(attrs, semconv.MessagingDestinationName(h.dest))
	} else {
		attrs = append(attrs, semconv.MessagingDestinationName(topic), semconv.MessagingConsumerGroupName(group))
	}
	h.attrs = attrs
	h.processName = "process " + h.dest
	start := append(attrs[:len(attrs):len(attrs)], semconv.MessagingOperationTypeProcess, AttrHandlerName.String(name))
	h.startAttrs = append(start, t.processServer...)
	set := metric.WithAttributeSet(attribute.NewSet(attrs...))
	h.consumedOK = []metric.AddOption{set}
	h.processOK = []metric.RecordOption{set}
	h.bus = append(attrs[:len(attrs):len(attrs)], AttrHandlerName.String(name))
	bset := metric.WithAttributeSet(attribute.NewSet(h.bus...))
	h.busRecordSet = []metric.RecordOption{bset}
	h.breakerOpt = bset
	return h
}

func (h *handlerTel) errOpts(et string) *errOpts {
	h.mu.Lock()
	defer h.mu.Unlock()
	if e := h.errs[et]; e != nil {
		return e
	}
	a := append(h.attrs[:len(h.attrs):len(h.attrs)], semconv.ErrorTypeKey.String(et))
	set := metric.WithAttributeSet(attribute.NewSet(a...))
	e := &errOpts{add: []metric.AddOption{set}, record: []metric.RecordOption{set}}
	if len(h.errs) < 64 {
		h.errs[et] = e
	}
	return e
}

// withAttrs returns options for a busline.* metric of this handler with
// extra attributes (not cached: these record rare events).
func (h *handlerTel) withAttrs(extra ...attribute.KeyValue) metric.MeasurementOption {
	return metric.WithAttributeSet(attribute.NewSet(append(h.bus[:len(h.bus):len(h.bus)], extra...)...))
}

// procCtx is the context of a message while its handler runs: the process
// span's context plus what the stack's hooks report back, and the state
// the telemetry middleware needs when the handler returns. It is one
// allocation per message.
type procCtx struct {
	context.Context
	deadLetter string // busline.dlq.reason when dead-lettered
	dlqErr     string
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

// handlerMiddleware is the outermost middleware of a handler: the process
// span (a CONSUMER span, child of and linked to the producer's span), the
// consumer metrics and the log line of a failure.
//
// The work is done in beginProcess and endProcess, which return before
// the handler runs or after it returned: the closure's own frame stays
// small. Watermill runs each message in a new goroutine, whose stack
// starts small; every byte the telemetry keeps on the stack while the
// SDK's span start or the handler's stack runs deeper can make the
// goroutine grow (copy) its stack once more per message.
func (t *telemetry) handlerMiddleware(ht *handlerTel) message.HandlerMiddleware {
	t.pollHandler(ht)
	if t.tracer == nil && t.m == nil {
		return func(h message.HandlerFunc) message.HandlerFunc {
			return func(msg *message.Message) ([]*message.Message, error) {
				out, err := h(msg)
				if err != nil {
					t.logFailure(msg, err, ht)
				}
				return out, err
			}
		}
	}
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			pc := t.beginProcess(msg, ht)
			out, err := h(msg)
			t.endProcess(pc, msg, err, ht)
			return out, err
		}
	}
}

// beginProcess starts the process span and counts the message consumed;
// msg's context becomes the returned procCtx.
func (t *telemetry) beginProcess(msg *message.Message, ht *handlerTel) *procCtx {
	orig := msg.Context()
	pc := &procCtx{Context: orig, start: time.Now()}
	if t.tracer != nil {
		pc.Context, pc.span = t.startProcess(orig, msg, ht)
	}
	if t.m != nil {
		n := int64(1)
		if mem := delivery.MemberFromContext(orig); mem != nil && mem.Batch.Carried() != nil {
			n = int64(mem.Batch.Size()) // a carrier of a batch (Kafka batch delivery)
		}
		t.m.consumed.Inst().Add(context.Background(), n, ht.consumedOK...)
	}
	msg.SetContext(pc)
	return pc
}

// endProcess ends the process span, records the process and end-to-end
// durations, and logs a failure.
func (t *telemetry) endProcess(pc *procCtx, msg *message.Message, err error, ht *handlerTel) {
	var et, desc string
	switch {
	case err != nil:
		et, desc = errorType(err), err.Error()
	case pc.deadLetter != "":
		et, desc = pc.deadLetter, "dead-lettered: "+pc.dlqErr
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
			t.m.processDuration.Inst().Record(ctx, d, ht.processOK...)
		} else {
			t.m.processDuration.Inst().Record(ctx, d, ht.errOpts(et).record...)
		}
		if age, ok := messageAge(msg.Metadata, now); ok {
			t.m.endToEnd.Record(ctx, age.Seconds(), ht.busRecordSet...)
		}
	}
	if err != nil {
		t.logFailure(msg, err, ht)
	}
}

// startProcess starts the process span of msg. Its parent is the
// producer's span extracted from the metadata (unless an ambient span is
// in ctx or WithNewRootOnProcess was given) and it always links to it.
// The options are built by processArgs, whose large frame (attribute
// values) is gone by the time the SDK runs.
func (t *telemetry) startProcess(ctx context.Context, msg *message.Message, ht *handlerTel) (context.Context, trace.Span) {
	a := getSpanArgs()
	parent := t.processArgs(ctx, msg, ht, a)
	pctx, sp := t.tracer.Start(parent, ht.processName, a.opts...)
	putSpanArgs(a)
	return pctx, sp
}

// processArgs fills a with the process span's start options and returns
// its parent context.
func (t *telemetry) processArgs(ctx context.Context, msg *message.Message, ht *handlerTel, a *spanArgs) context.Context {
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
	a.attrs = appendMessageAttrs(append(a.attrs, ht.startAttrs...), msg, t.broker == BrokerKafka)
	if mem := delivery.MemberFromContext(ctx); mem != nil && mem.Batch.Carried() != nil {
		a.attrs = append(a.attrs, semconv.MessagingBatchMessageCount(mem.Batch.Size()))
	}
	switch t.broker {
	case BrokerKafka:
		if ri, ok := kafka.RecordFromContext(ctx); ok {
			a.attrs = append(a.attrs, semconv.MessagingDestinationPartitionID(strconv.Itoa(int(ri.Partition))),
				semconv.MessagingKafkaOffset(int(ri.Offset)))
		}
	case BrokerAMQP:
		if rk := msg.Metadata[amqp.KeyRoutingKey]; rk != "" {
			a.attrs = append(a.attrs, semconv.MessagingRabbitMQDestinationRoutingKey(rk))
		}
		if tag, err := strconv.Atoi(msg.Metadata[amqp.KeyDeliveryTag]); err == nil {
			a.attrs = append(a.attrs, semconv.MessagingRabbitMQMessageDeliveryTag(tag))
		}
	}
	a.opts = append(a.opts, a.attrsOption())
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
func (t *telemetry) logFailure(msg *message.Message, err error, ht *handlerTel) {
	ctx := msg.Context()
	level := slog.LevelWarn
	if ctx.Err() != nil {
		level = slog.LevelDebug // shutdown: redelivered later, expected
	}
	if !t.logger.Enabled(ctx, level) {
		return
	}
	t.logger.LogAttrs(ctx, level, "bus: handling failed, the message will be delivered again",
		append(messageLogAttrs(ctx, msg),
			slog.String("handler", ht.name),
			slog.String("topic", ht.topic),
			slog.String("error_type", errorType(err)),
			slog.Any("error", err))...)
}
