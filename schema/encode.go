package schema

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

type envelopeKey struct{}

// ContextWithEnvelope returns a copy of ctx that carries env, the envelope
// of the event being handled. Events encoded with that context inherit its
// correlation: see [Registry.Encode].
func ContextWithEnvelope(ctx context.Context, env Envelope) context.Context {
	return context.WithValue(ctx, envelopeKey{}, env)
}

// EnvelopeFromContext returns the envelope stored by [ContextWithEnvelope].
func EnvelopeFromContext(ctx context.Context) (Envelope, bool) {
	env, ok := ctx.Value(envelopeKey{}).(Envelope)
	return env, ok
}

// MessageOption sets an attribute of one event in [Registry.Encode] and
// [Registry.NewMessage].
type MessageOption func(*Envelope)

// WithSubject sets the subject attribute, such as an order id.
func WithSubject(subject string) MessageOption { return func(e *Envelope) { e.Subject = subject } }

// WithEventID sets the event id instead of a new one (for instance to
// re-send the same event).
func WithEventID(id string) MessageOption { return func(e *Envelope) { e.ID = id } }

// WithEventSource sets the source attribute instead of the registry's.
func WithEventSource(source string) MessageOption { return func(e *Envelope) { e.Source = source } }

// WithTime sets the time attribute instead of now.
func WithTime(t time.Time) MessageOption { return func(e *Envelope) { e.Time = t } }

// WithCorrelationID sets the correlationid extension instead of the
// inherited one.
func WithCorrelationID(id string) MessageOption {
	return func(e *Envelope) { e.CorrelationID = id }
}

// WithCausationID sets the causationid extension instead of the inherited
// one.
func WithCausationID(id string) MessageOption { return func(e *Envelope) { e.CausationID = id } }

// WithPartitionKey sets the partitionkey extension.
func WithPartitionKey(key string) MessageOption { return func(e *Envelope) { e.PartitionKey = key } }

// WithExtension sets an extension attribute; name must be lower-case
// letters and digits.
func WithExtension(name, value string) MessageOption {
	return func(e *Envelope) {
		if e.Extensions == nil {
			e.Extensions = make(map[string]string)
		}
		e.Extensions[name] = value
	}
}

// Encode encodes v, a value (or non-nil pointer to a value) of a registered
// Go type, and builds its envelope: id new (see [WithIDGenerator]), source
// from [WithSource], specversion 1.0, type and dataversion from the
// registration of v's Go type, dataschema derived from [WithSchemaBase],
// datacontenttype from the codec, time now in UTC.
//
// When ctx carries the envelope of the event being handled
// ([ContextWithEnvelope]), the new event inherits its correlation id (or
// takes its id when it has none) and its id becomes the causation id. opts
// are applied last and win. The envelope is validated.
//
// Errors are [*Error]: [CodeEventTypeUnknown] when v's Go type is not
// registered, [CodeEncodeFailed], [CodeEnvelopeInvalid].
func (r *Registry) Encode(ctx context.Context, v any, opts ...MessageOption) (Envelope, []byte, error) {
	s := r.snapshot()
	cv := s.lookupValue(v)
	if cv == nil {
		return Envelope{}, nil, newError(CodeEventTypeUnknown, "", 0, fmt.Errorf("Go type %T is not registered", v))
	}
	t := cv.typ
	env := Envelope{
		ID:              r.cfg.newID(),
		Source:          r.cfg.source,
		SpecVersion:     SpecVersion,
		Type:            t.name,
		Time:            r.cfg.now().UTC(),
		DataContentType: t.contentType,
		DataSchema:      cv.dataSchema,
		DataVersion:     cv.version,
	}
	if ctx != nil {
		if parent, ok := EnvelopeFromContext(ctx); ok {
			// The parent's correlation: its own id when it carries none.
			env.CorrelationID = Correlation("", parent.CorrelationID, parent.ID)
			env.CausationID = parent.ID
		}
	}
	for _, o := range opts {
		o(&env)
	}
	if err := env.Validate(); err != nil {
		return env, nil, err
	}
	data, err := t.codec.Marshal(v)
	if err != nil {
		return env, nil, newError(CodeEncodeFailed, t.name, cv.version, err)
	}
	return env, data, nil
}

// NewMessage is [Registry.Encode] returning a Watermill message: UUID and
// ce_id are the event id, the payload is the encoded value, the envelope is
// in the metadata ([Envelope.Apply]) and ctx is the message's context.
func (r *Registry) NewMessage(ctx context.Context, v any, opts ...MessageOption) (*message.Message, error) {
	env, data, err := r.Encode(ctx, v, opts...)
	if err != nil {
		return nil, err
	}
	msg := message.NewMessage(env.ID, data)
	env.Apply(msg)
	if ctx != nil {
		msg.SetContext(ctx)
	}
	return msg, nil
}

func (s *snapshot) lookupValue(v any) *compiledVersion {
	rt := reflect.TypeOf(v)
	if rt == nil {
		return nil
	}
	if cv := s.goTypes[rt]; cv != nil {
		return cv
	}
	if rt.Kind() == reflect.Pointer && !reflect.ValueOf(v).IsNil() {
		return s.goTypes[rt.Elem()]
	}
	return nil
}

// TypeOf returns the event type and version the Go type T is registered
// for, and whether it is.
func TypeOf[T any](r *Registry) (eventType string, version int, ok bool) {
	cv := r.snapshot().goTypes[reflect.TypeFor[T]()]
	if cv == nil {
		return "", 0, false
	}
	return cv.typ.name, cv.version, true
}

// TypeInfo describes one registered event type, for documentation and
// debugging endpoints.
type TypeInfo struct {
	// Type is the event type.
	Type string
	// Current is the current version, 0 if no Go type is registered.
	Current int
	// Versions lists the versions bound to a Go type, ascending.
	Versions []int
	// Readable lists every version a consumer accepts: the current one and
	// those with an upcaster chain to it, ascending.
	Readable []int
	// ContentType is the codec's content type.
	ContentType string
	// DataSchema is the dataschema of the current version, if any.
	DataSchema string
}

// Types describes every registered event type, sorted by type.
func (r *Registry) Types() []TypeInfo {
	s := r.snapshot()
	out := make([]TypeInfo, 0, len(s.types))
	for _, name := range slices.Sorted(mapKeysOf(s.types)) {
		t := s.types[name]
		info := TypeInfo{Type: name, Current: t.current, ContentType: t.contentType, DataSchema: t.schemaCurrent}
		info.Versions = slices.Sorted(mapKeysOf(t.versions))
		if t.current != 0 {
			v := t.current
			for v > 1 && t.steps[v-1] != nil {
				v--
			}
			for ; v <= t.current; v++ {
				info.Readable = append(info.Readable, v)
			}
		}
		out = append(out, info)
	}
	return out
}
