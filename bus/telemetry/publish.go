package telemetry

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/busline/busline/bus/broker"
	"github.com/busline/busline/schema"
)

// maxTopicCache bounds the per-topic attribute cache of the publisher;
// topics beyond it get their attributes built on each publish.
const maxTopicCache = 1024

// topicTel is what the publisher precomputes for one topic.
type topicTel struct {
	sendName  string
	spanAttrs []attribute.KeyValue // system, operation, destination, operation type, server and client
	sentOK    []metric.AddOption
	durOK     []metric.RecordOption
	errs      errCache // of system, operation name, destination; recorded with the operation type
}

func (t *Telemetry) topic(name string) *topicTel {
	if v, ok := t.topics.Load(name); ok {
		return v.(*topicTel)
	}
	dest := t.desc.SendDestination(name)
	attrs := []attribute.KeyValue{
		t.system,
		semconv.MessagingOperationName(t.sendOpName),
		semconv.MessagingDestinationName(dest),
	}
	startAttrs := append(attrs[:3:3], semconv.MessagingOperationTypeSend)
	tt := &topicTel{
		sendName:  t.sendOpName + " " + dest,
		spanAttrs: append(startAttrs[:len(startAttrs):len(startAttrs)], t.sendServer...),
		sentOK:    []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attrs...))},
		durOK:     []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(startAttrs...))},
		errs:      errCache{base: attrs, record: []attribute.KeyValue{semconv.MessagingOperationTypeSend}},
	}
	if t.topicCount.Load() < maxTopicCache {
		if v, loaded := t.topics.LoadOrStore(name, tt); loaded {
			return v.(*topicTel)
		}
		t.topicCount.Add(1)
	}
	return tt
}

// Publisher wraps p with tracing and metrics: a send span per message,
// its context injected into the message's metadata, and each Publish
// counted and timed. With tracing and metrics off it returns p.
func (t *Telemetry) Publisher(p message.Publisher) message.Publisher {
	if t.tracer == nil && t.m == nil {
		return p
	}
	return &publisher{next: p, t: t}
}

type publisher struct {
	next message.Publisher
	t    *Telemetry
}

// Publish implements message.Publisher.
func (p *publisher) Publish(topic string, msgs ...*message.Message) error {
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
		et = t.publishErrorType(err)
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
			e := tt.errs.get(et)
			t.m.sent.Inst().Add(ctx, int64(len(msgs)), e.add...)
			t.m.opDuration.Inst().Record(ctx, d, e.record...)
		}
	}
	return err
}

// Close implements message.Publisher.
func (p *publisher) Close() error { return p.next.Close() }

// startSend starts the send span of m. A message with no creation context
// gets the span's, and the span is a PRODUCER; one that has a creation
// context already (forwarded, dead-lettered, replayed) keeps it, and the
// span is a CLIENT span linked to it. Every attribute is given at start,
// so samplers see them.
func (t *Telemetry) startSend(m *message.Message, tt *topicTel) trace.Span {
	ctx := m.Context()
	carrier := propagation.MapCarrier(m.Metadata)
	a := getSpanArgs()
	defer a.release()
	a.attrs = appendMessageAttrs(append(a.attrs, tt.spanAttrs...), m, t.desc.MessageFacts(ctx, m).Key)
	if t.hasCreationContext(m.Metadata) {
		a.opts = append(a.opts, clientKind, trace.WithAttributes(a.attrs...))
		if sc := trace.SpanContextFromContext(t.prop.Extract(context.Background(), carrier)); sc.IsValid() {
			a.opts = append(a.opts, trace.WithLinks(trace.Link{SpanContext: sc}))
		}
		_, sp := t.tracer.Start(ctx, tt.sendName, a.opts...)
		return sp
	}
	a.opts = append(a.opts, producerKind, trace.WithAttributes(a.attrs...))
	sctx, sp := t.tracer.Start(ctx, tt.sendName, a.opts...)
	t.prop.Inject(sctx, carrier)
	return sp
}

// spanArgs are a span's start options and attributes, reused across
// spans: trace.WithAttributes appends the attributes to the span's
// configuration (trace.NewSpanStartConfig), so no tracer keeps the slice
// past Start.
type spanArgs struct {
	attrs []attribute.KeyValue
	opts  []trace.SpanStartOption
}

var spanArgsPool = sync.Pool{New: func() any {
	return &spanArgs{attrs: make([]attribute.KeyValue, 0, 24), opts: make([]trace.SpanStartOption, 0, 4)}
}}

func getSpanArgs() *spanArgs { return spanArgsPool.Get().(*spanArgs) }

// release clears a (the pool keeps no attribute value alive) and puts it
// back.
func (a *spanArgs) release() {
	clear(a.attrs)
	clear(a.opts)
	a.attrs, a.opts = a.attrs[:0], a.opts[:0]
	spanArgsPool.Put(a)
}

var (
	producerKind = trace.WithSpanKind(trace.SpanKindProducer)
	clientKind   = trace.WithSpanKind(trace.SpanKindClient)
	consumerKind = trace.WithSpanKind(trace.SpanKindConsumer)
	newRoot      = trace.WithNewRoot()
)

// appendMessageAttrs appends the attributes of one message, for send and
// process spans; key is the broker's partitioning key of it.
func appendMessageAttrs(attrs []attribute.KeyValue, m *message.Message, key string) []attribute.KeyValue {
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
	if key != "" {
		attrs = append(attrs, semconv.MessagingKafkaMessageKey(key))
	}
	return attrs
}

// publishErrorType is the error.type of a failed publish.
func (t *Telemetry) publishErrorType(err error) string {
	switch {
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, broker.ErrClosed):
		return "closed"
	}
	if et := t.desc.PublishErrorType(err); et != "" {
		return et
	}
	return semconv.ErrorType(err).Value.AsString()
}
