package schema

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
)

// UpcastFunc turns the data of one schema version into the data of the next
// version. It works on the encoded bytes (raw JSON with the JSON codec), so
// old versions need no Go type. It must be pure and must not modify data;
// it may return data itself when nothing changes.
type UpcastFunc func(data []byte) ([]byte, error)

// Registry maps event types and schema versions to Go types, upcasts old
// versions to the current one, and stamps the envelope of published events.
//
// Register types with [Register] and upcasters with [Registry.Upcast], then
// call [Registry.Check] at start-up: it lists every problem at once. The
// current version of a type is the highest version bound to a Go type;
// every version below it that should stay readable needs an upcaster to the
// next version (v1->v2, v2->v3, ...).
//
// A Registry is safe for concurrent use. Registration may happen at any
// time, but is meant for start-up: decoding and encoding read an immutable
// snapshot that each registration invalidates and the next read rebuilds.
type Registry struct {
	cfg registryConfig

	mu   sync.Mutex // guards regs, ups, typeOpts
	regs []registration
	ups  []upcastReg
	snap atomic.Pointer[snapshot]
}

type registryConfig struct {
	codec      Codec
	source     string
	schemaBase string
	now        func() time.Time
	newID      func() string
}

// Option configures a [Registry].
type Option func(*registryConfig)

// WithCodec sets the codec of every event type that does not set its own
// with [WithTypeCodec]. Default: [JSON].
func WithCodec(c Codec) Option { return func(cfg *registryConfig) { cfg.codec = c } }

// WithSource sets the source attribute of the events the registry encodes:
// a URI-reference naming the producing service, such as
// "https://acme.example/services/orders" or "/orders-service". Default: "/"
// followed by the program's file name.
func WithSource(source string) Option {
	return func(cfg *registryConfig) { cfg.source = source }
}

// WithSchemaBase sets the base URI of the dataschema attribute: the
// dataschema of version N of type T is base + "/" + T + "/vN.json", such as
// "https://schemas.acme.example/events/com.acme.order.created/v2.json".
// Default: none, events carry no dataschema. The same pattern is read back
// when an event lacks dataversion.
func WithSchemaBase(base string) Option {
	return func(cfg *registryConfig) { cfg.schemaBase = strings.TrimRight(base, "/") }
}

// WithClock sets the clock that stamps the time attribute. Default:
// time.Now. Times are written in UTC.
func WithClock(now func() time.Time) Option { return func(cfg *registryConfig) { cfg.now = now } }

// WithIDGenerator sets the function that makes event ids (and message
// UUIDs). Default: a UUID version 7 (time-ordered) string.
func WithIDGenerator(newID func() string) Option {
	return func(cfg *registryConfig) { cfg.newID = newID }
}

// TypeOption configures one event type in [Register]. Give each option once
// per type (on any of its versions); conflicting settings are reported by
// [Registry.Check].
type TypeOption func(*typeSettings)

type typeSettings struct {
	codec  Codec
	assume int
}

// WithTypeCodec sets the codec of the event type, instead of the registry's.
func WithTypeCodec(c Codec) TypeOption { return func(s *typeSettings) { s.codec = c } }

// AssumeVersion makes events of the type that carry no dataversion (and no
// dataschema that names one) read as version v, for legacy producers.
// Without it such events are rejected with [CodeVersionMissing].
func AssumeVersion(v int) TypeOption { return func(s *typeSettings) { s.assume = v } }

type registration struct {
	eventType string
	version   int
	goType    reflect.Type
	decode    func(c Codec, data []byte) (any, error)
	settings  typeSettings
}

type upcastReg struct {
	eventType string
	from, to  int
	fn        UpcastFunc
}

// NewRegistry returns an empty registry.
func NewRegistry(opts ...Option) *Registry {
	r := &Registry{cfg: registryConfig{
		codec:  JSON,
		source: defaultSource(),
		now:    time.Now,
		newID:  newUUID,
	}}
	for _, o := range opts {
		o(&r.cfg)
	}
	return r
}

func defaultSource() string {
	if len(os.Args) > 0 && os.Args[0] != "" {
		if b := filepath.Base(os.Args[0]); b != "." && b != string(filepath.Separator) {
			return "/" + b
		}
	}
	return "/busline"
}

func newUUID() string {
	if id, err := uuid.NewV7(); err == nil {
		return id.String()
	}
	return watermill.NewUUID()
}

// Register binds version of eventType to the Go type T: events of that
// type and version decode into a T, and publishing a T stamps that type and
// version. eventType is the explicit, stable name on the wire, such as
// "com.example.order.created", never derived from T's name, and carries no
// version. Versions start at 1; the highest registered one is current.
//
// Register never fails: problems (duplicates, a T bound twice, versions
// below 1, ...) are reported by [Registry.Check].
func Register[T any](r *Registry, eventType string, version int, opts ...TypeOption) {
	var s typeSettings
	for _, o := range opts {
		o(&s)
	}
	r.add(registration{
		eventType: eventType,
		version:   version,
		goType:    reflect.TypeFor[T](),
		decode: func(c Codec, data []byte) (any, error) {
			var v T
			err := c.Unmarshal(data, &v)
			return v, err
		},
		settings: s,
	})
}

func (r *Registry) add(reg registration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.regs = append(r.regs, reg)
	r.snap.Store(nil)
}

// Upcast registers fn to turn data of version from of eventType into data
// of version to, which must be from+1. Upcasters chain: a v1 event reaches
// v3 through v1->v2 and v2->v3. Problems are reported by [Registry.Check].
func (r *Registry) Upcast(eventType string, from, to int, fn UpcastFunc) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ups = append(r.ups, upcastReg{eventType: eventType, from: from, to: to, fn: fn})
	r.snap.Store(nil)
}

// Check reports every registration problem at once, joined with
// errors.Join, or nil: invalid event type names, versions below 1,
// duplicate versions or upcasters, a Go type bound twice, upcasters that
// skip a version, gaps (a missing upcaster between the lowest known version
// and the current one), upcasters leading past the highest registered
// version (its Go type is missing), types with upcasters but no Go type,
// conflicting type options, and derived dataschema URIs that are not
// absolute URIs. Call it once at start-up, after registering.
func (r *Registry) Check() error {
	return r.snapshot().problems
}

// snapshot is the compiled, immutable view of the registrations.
type snapshot struct {
	types    map[string]*compiledType
	goTypes  map[reflect.Type]*compiledVersion
	problems error
}

type compiledType struct {
	name          string
	codec         Codec
	contentType   string
	current       int
	assume        int
	versions      map[int]*compiledVersion
	steps         map[int]UpcastFunc // from -> from+1
	schemaPrefix  string             // base/type/v, empty without base
	schemaCurrent string
}

type compiledVersion struct {
	typ        *compiledType
	version    int
	goType     reflect.Type
	decode     func(c Codec, data []byte) (any, error)
	dataSchema string
}

func (r *Registry) snapshot() *snapshot {
	if s := r.snap.Load(); s != nil {
		return s
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := r.snap.Load(); s != nil {
		return s
	}
	s := r.compile()
	r.snap.Store(s)
	return s
}

func (r *Registry) compile() *snapshot {
	s := &snapshot{
		types:   make(map[string]*compiledType),
		goTypes: make(map[reflect.Type]*compiledVersion),
	}
	var problems []error
	problem := func(typ, format string, args ...any) {
		problems = append(problems, fmt.Errorf("schema: type %q: %s", typ, fmt.Sprintf(format, args...)))
	}
	typeOf := func(name string) *compiledType {
		t := s.types[name]
		if t == nil {
			t = &compiledType{
				name:     name,
				versions: make(map[int]*compiledVersion),
				steps:    make(map[int]UpcastFunc),
			}
			s.types[name] = t
		}
		return t
	}
	validVersion := func(v int) bool { return v >= 1 && v <= math.MaxInt32 }

	// Go types, in registration order.
	goTypeUses := make(map[reflect.Type][]string)
	codecs := make(map[string]Codec)
	assumes := make(map[string]int)
	for _, reg := range r.regs {
		if !validEventType(reg.eventType) {
			problem(reg.eventType, "invalid event type name: want a non-empty name without spaces or control characters, such as com.example.order.created")
			continue
		}
		if !validVersion(reg.version) {
			problem(reg.eventType, "Go type %v: version %d is not from 1 to %d", reg.goType, reg.version, math.MaxInt32)
			continue
		}
		t := typeOf(reg.eventType)
		if prev, dup := t.versions[reg.version]; dup {
			problem(reg.eventType, "version %d registered twice (Go types %v and %v)", reg.version, prev.goType, reg.goType)
			continue
		}
		cv := &compiledVersion{typ: t, version: reg.version, goType: reg.goType, decode: reg.decode}
		t.versions[reg.version] = cv
		goTypeUses[reg.goType] = append(goTypeUses[reg.goType], fmt.Sprintf("%s v%d", reg.eventType, reg.version))
		if _, taken := s.goTypes[reg.goType]; !taken {
			s.goTypes[reg.goType] = cv
		}
		if c := reg.settings.codec; c != nil {
			if prev, ok := codecs[reg.eventType]; ok && prev.ContentType() != c.ContentType() {
				problem(reg.eventType, "conflicting codecs %q and %q", prev.ContentType(), c.ContentType())
			} else {
				codecs[reg.eventType] = c
			}
		}
		if a := reg.settings.assume; a != 0 {
			if prev, ok := assumes[reg.eventType]; ok && prev != a {
				problem(reg.eventType, "conflicting assumed versions %d and %d", prev, a)
			} else {
				assumes[reg.eventType] = a
			}
		}
	}
	for gt, uses := range goTypeUses {
		if len(uses) > 1 {
			problems = append(problems, fmt.Errorf("schema: Go type %v bound %d times (%s): each Go type must name one type and version", gt, len(uses), strings.Join(uses, ", ")))
		}
	}

	// Upcasters.
	for _, up := range r.ups {
		switch {
		case !validEventType(up.eventType):
			problem(up.eventType, "upcaster: invalid event type name")
			continue
		case !validVersion(up.from) || up.to != up.from+1:
			problem(up.eventType, "upcaster v%d->v%d: must go from a version >= 1 to the next one", up.from, up.to)
			continue
		case up.fn == nil:
			problem(up.eventType, "upcaster v%d->v%d: nil function", up.from, up.to)
			continue
		}
		t := typeOf(up.eventType)
		if _, dup := t.steps[up.from]; dup {
			problem(up.eventType, "upcaster v%d->v%d registered twice", up.from, up.to)
			continue
		}
		t.steps[up.from] = up.fn
	}

	// Per type: current version, chain, codec, dataschema.
	for _, name := range slices.Sorted(mapKeysOf(s.types)) {
		t := s.types[name]
		lowest := 0
		for v := range t.versions {
			t.current = max(t.current, v)
			if lowest == 0 || v < lowest {
				lowest = v
			}
		}
		for from := range t.steps {
			if lowest == 0 || from < lowest {
				lowest = from
			}
		}
		if t.current == 0 {
			problem(name, "upcasters but no Go type registered: no current version")
		} else {
			for v := lowest; v < t.current; v++ {
				if t.steps[v] == nil {
					problem(name, "gap: missing upcaster v%d->v%d (current version %d)", v, v+1, t.current)
				}
			}
			for _, from := range slices.Sorted(mapKeysOf(t.steps)) {
				if from >= t.current {
					problem(name, "upcaster v%d->v%d leads past the current version %d: register the Go type of version %d", from, from+1, t.current, from+1)
				}
			}
		}
		t.codec = r.cfg.codec
		if c, ok := codecs[name]; ok {
			t.codec = c
		}
		if t.codec == nil {
			problem(name, "nil codec")
			t.codec = JSON
		}
		t.contentType = t.codec.ContentType()
		if a, ok := assumes[name]; ok {
			if a < 1 || (t.current != 0 && a > t.current) {
				problem(name, "assumed version %d is not from 1 to the current version %d", a, t.current)
			} else {
				t.assume = a
			}
		}
		if r.cfg.schemaBase != "" {
			t.schemaPrefix = r.cfg.schemaBase + "/" + name + "/v"
			for v, cv := range t.versions {
				cv.dataSchema = t.schemaPrefix + strconv.Itoa(v) + ".json"
			}
			if cv := t.versions[t.current]; cv != nil {
				t.schemaCurrent = cv.dataSchema
				if isAbsoluteURI(r.cfg.schemaBase) && !isAbsoluteURI(cv.dataSchema) {
					problem(name, "dataschema %q is not an absolute URI (check WithSchemaBase)", cv.dataSchema)
				}
			}
		}
	}
	if r.cfg.schemaBase != "" && !isAbsoluteURI(r.cfg.schemaBase) {
		problems = append(problems, fmt.Errorf("schema: schema base %q is not an absolute URI (check WithSchemaBase)", r.cfg.schemaBase))
	}
	if r.cfg.source == "" || !isURIReference(r.cfg.source) {
		problems = append(problems, fmt.Errorf("schema: source %q is not a URI-reference (check WithSource)", r.cfg.source))
	}
	slices.SortStableFunc(problems, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
	s.problems = errors.Join(problems...)
	return s
}

func validEventType(name string) bool {
	if name == "" || !isText(name) {
		return false
	}
	return strings.IndexFunc(name, unicode.IsSpace) < 0
}

func mapKeysOf[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// resolve finds the registered type of env and the version its data has.
func (s *snapshot) resolve(env *Envelope) (*compiledType, int, error) {
	t := s.types[env.Type]
	if t == nil || t.current == 0 {
		return nil, 0, newError(CodeEventTypeUnknown, env.Type, env.DataVersion, nil)
	}
	v := env.DataVersion
	if v == 0 {
		v = t.versionFromSchema(env.DataSchema)
	}
	if v == 0 {
		v = t.assume
	}
	if v == 0 {
		return nil, 0, newError(CodeVersionMissing, env.Type, 0, errors.New("no dataversion attribute"))
	}
	return t, v, nil
}

func (t *compiledType) versionFromSchema(ds string) int {
	if t.schemaPrefix == "" {
		return 0
	}
	rest, ok := strings.CutPrefix(ds, t.schemaPrefix)
	if !ok {
		return 0
	}
	rest, ok = strings.CutSuffix(rest, ".json")
	if !ok {
		return 0
	}
	n, err := strconv.Atoi(rest)
	if err != nil || n < 1 {
		return 0
	}
	return n
}

// upcast brings data of version from to version to through the upcaster
// chain. data is never modified: the first upcaster gets a copy.
func (t *compiledType) upcast(data []byte, from, to int) ([]byte, error) {
	if from > to {
		return nil, newError(CodeVersionUnknown, t.name, from, fmt.Errorf("newer than version %d, the latest this consumer knows", to))
	}
	if from == to {
		return data, nil
	}
	for v := from; v < to; v++ {
		if t.steps[v] == nil {
			if v == from {
				return nil, newError(CodeVersionUnknown, t.name, from, errors.New("no upcaster from this version"))
			}
			return nil, newError(CodeVersionUnknown, t.name, from, fmt.Errorf("no upcaster v%d->v%d", v, v+1))
		}
	}
	out := bytes.Clone(data)
	for v := from; v < to; v++ {
		next, err := t.steps[v](out)
		if err != nil {
			return nil, newError(CodeUpcastFailed, t.name, v, fmt.Errorf("v%d->v%d: %w", v, v+1, err))
		}
		out = next
	}
	return out, nil
}

func (t *compiledType) checkContentType(env *Envelope, version int) error {
	if !contentTypeMatches(env.DataContentType, t.contentType) {
		return newError(CodeDecodeFailed, t.name, version, fmt.Errorf("content type %q, codec reads %q", env.DataContentType, t.contentType))
	}
	return nil
}

// Decode reads the envelope of msg ([FromMessage]), upcasts its data to the
// current version of its type and decodes it into the Go type registered
// for that version. The value is returned as that Go type (not a pointer).
//
// msg is never modified: upcasters work on a copy of the payload. Every
// error is an [*Error] (permanent): [CodeEnvelopeInvalid],
// [CodeEventTypeUnknown], [CodeVersionMissing], [CodeVersionUnknown] (also
// for versions newer than the current one), [CodeUpcastFailed],
// [CodeDecodeFailed]. The envelope is returned whenever it could be read.
func (r *Registry) Decode(msg *message.Message) (any, Envelope, error) {
	env, data, err := FromMessage(msg)
	if err != nil {
		return nil, env, err
	}
	v, err := r.DecodeData(env, data)
	return v, env, err
}

// DecodeData is [Registry.Decode] for an envelope and data already read.
// data is not modified.
func (r *Registry) DecodeData(env Envelope, data []byte) (any, error) {
	t, ver, err := r.snapshot().resolve(&env)
	if err != nil {
		return nil, err
	}
	if err := t.checkContentType(&env, ver); err != nil {
		return nil, err
	}
	cur := t.versions[t.current]
	out, err := t.upcast(data, ver, t.current)
	if err != nil {
		return nil, err
	}
	v, err := cur.decode(t.codec, out)
	if err != nil {
		return nil, newError(CodeDecodeFailed, t.name, ver, err)
	}
	return v, nil
}

// DecodeAs is [Registry.Decode] into the Go type T: the event must be of
// the type T is registered for, and its data is upcast to T's version (the
// current one, unless T is bound to an older version). An event of another
// type, or T not registered, gives [CodeEventTypeUnknown]; an event newer
// than T's version gives [CodeVersionUnknown].
func DecodeAs[T any](r *Registry, msg *message.Message) (T, Envelope, error) {
	var zero T
	env, data, err := FromMessage(msg)
	if err != nil {
		return zero, env, err
	}
	v, err := DecodeDataAs[T](r, env, data)
	return v, env, err
}

// DecodeDataAs is [DecodeAs] for an envelope and data already read. data is
// not modified.
func DecodeDataAs[T any](r *Registry, env Envelope, data []byte) (T, error) {
	var v T
	s := r.snapshot()
	cv := s.goTypes[reflect.TypeFor[T]()]
	if cv == nil {
		return v, newError(CodeEventTypeUnknown, env.Type, env.DataVersion, fmt.Errorf("Go type %v is not registered", reflect.TypeFor[T]()))
	}
	if cv.typ.name != env.Type {
		return v, newError(CodeEventTypeUnknown, env.Type, env.DataVersion, fmt.Errorf("Go type %v is registered for %q", reflect.TypeFor[T](), cv.typ.name))
	}
	t, ver, err := s.resolve(&env)
	if err != nil {
		return v, err
	}
	if err := t.checkContentType(&env, ver); err != nil {
		return v, err
	}
	out, err := t.upcast(data, ver, cv.version)
	if err != nil {
		return v, err
	}
	if err := t.codec.Unmarshal(out, &v); err != nil {
		var zero T
		return zero, newError(CodeDecodeFailed, t.name, ver, err)
	}
	return v, nil
}
