package schema

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
)

// SpecVersion is the CloudEvents specification version Busline speaks.
const SpecVersion = "1.0"

// Structured-mode content types of the CloudEvents JSON event format.
const (
	// ContentTypeStructured is the content type of a structured-mode
	// CloudEvent in the JSON event format: attributes and data in the body.
	ContentTypeStructured = "application/cloudevents+json"
	// contentTypeCEPrefix marks structured mode (any event format).
	contentTypeCEPrefix = "application/cloudevents"
)

// Envelope holds the CloudEvents 1.0 attributes of one event, independent of
// the transport. In a Watermill message they live in the metadata under the
// Key constants (binary content mode); the payload is the event data.
//
// The zero value of an optional field means the attribute is absent.
type Envelope struct {
	// ID identifies the event (attribute id, required). Busline uses a
	// UUID and sets the Watermill message UUID to the same value.
	ID string
	// Source identifies the producer (attribute source, required), a
	// URI-reference such as "/orders-service" or "urn:acme:orders".
	Source string
	// SpecVersion is the CloudEvents version (attribute specversion,
	// required), always [SpecVersion]. [Envelope.Apply] writes "1.0" when it
	// is empty.
	SpecVersion string
	// Type is the event type (attribute type, required), a reverse-DNS name
	// that carries no version, such as "com.example.order.created".
	Type string
	// Time is when the occurrence happened (attribute time). Written in UTC
	// as RFC 3339 with sub-second precision.
	Time time.Time
	// Subject is what the event is about within Source, such as an order
	// id (attribute subject).
	Subject string
	// DataContentType is the media type of the data (attribute
	// datacontenttype, metadata key content-type).
	DataContentType string
	// DataSchema is the absolute URI of the schema the data adheres to
	// (attribute dataschema).
	DataSchema string
	// DataVersion is the schema version of the data (extension dataversion,
	// an integer from 1 to 2^31-1); 0 means absent.
	DataVersion int
	// CorrelationID groups the events of one business flow (extension
	// correlationid).
	CorrelationID string
	// CausationID is the ID of the event whose handling produced this one
	// (extension causationid).
	CausationID string
	// PartitionKey orders related events (extension partitionkey); the Kafka
	// publisher may use it as the record key.
	PartitionKey string
	// Extensions holds any other extension attribute by name (without the
	// ce_ prefix). Names must be lower-case letters and digits.
	Extensions map[string]string
}

// reserved lists the attribute names that have an Envelope field (plus data),
// so they cannot be extensions.
var reserved = map[string]bool{
	"id": true, "source": true, "specversion": true, "type": true, "time": true,
	"subject": true, "datacontenttype": true, "dataschema": true, "data": true,
	"dataversion": true, "correlationid": true, "causationid": true, "partitionkey": true,
}

// Validate reports every problem of e at once, as an [*Error] with code
// [CodeEnvelopeInvalid] joining one error per problem, or nil. It checks the
// CloudEvents rules: id, source, specversion and type present; specversion
// "1.0"; source a URI-reference (RFC 3986); dataschema, when set, an
// absolute URI; dataversion absent (0) or from 1 to 2^31-1; extension names
// made of lower-case letters and digits and not an attribute that has its
// own field; string attributes free of control characters and valid UTF-8.
//
// A missing dataversion is not an envelope problem: the registry reports it
// as [CodeVersionMissing], so foreign CloudEvents still pass Validate.
func (e Envelope) Validate() error {
	var errs []error
	required := func(name, v string) {
		if v == "" {
			errs = append(errs, fmt.Errorf("%s is required", name))
		}
	}
	required("id", e.ID)
	required("source", e.Source)
	required("specversion", e.SpecVersion)
	required("type", e.Type)
	if e.SpecVersion != "" && e.SpecVersion != SpecVersion {
		errs = append(errs, fmt.Errorf("specversion %q is not %q", e.SpecVersion, SpecVersion))
	}
	if e.Source != "" && !isURIReference(e.Source) {
		errs = append(errs, fmt.Errorf("source %q is not a URI-reference", e.Source))
	}
	if e.DataSchema != "" && !isAbsoluteURI(e.DataSchema) {
		errs = append(errs, fmt.Errorf("dataschema %q is not an absolute URI", e.DataSchema))
	}
	if e.DataVersion < 0 || e.DataVersion > math.MaxInt32 {
		errs = append(errs, fmt.Errorf("dataversion %d is not from 1 to %d", e.DataVersion, math.MaxInt32))
	}
	text := func(name, v string) {
		if !isText(v) {
			errs = append(errs, fmt.Errorf("%s %q holds control characters or invalid UTF-8", name, v))
		}
	}
	text("id", e.ID)
	text("type", e.Type)
	text("subject", e.Subject)
	text("datacontenttype", e.DataContentType)
	text("correlationid", e.CorrelationID)
	text("causationid", e.CausationID)
	text("partitionkey", e.PartitionKey)
	if len(e.Extensions) > 0 {
		for _, name := range slices.Sorted(maps.Keys(e.Extensions)) {
			switch {
			case !isExtensionName(name):
				errs = append(errs, fmt.Errorf("extension name %q is not lower-case letters and digits", name))
			case reserved[name]:
				errs = append(errs, fmt.Errorf("extension name %q is an attribute with its own field", name))
			}
			text("extension "+name, e.Extensions[name])
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return newError(CodeEnvelopeInvalid, e.Type, e.DataVersion, errors.Join(errs...))
}

// Apply writes e into msg as binary-mode metadata: it first removes every
// ce_ key and content-type from msg.Metadata, then writes each non-empty
// attribute under its Key constant (extensions under ce_ plus their name).
// Other metadata (traceparent, busline_ keys) is left alone. An empty
// SpecVersion is written as "1.0".
//
// The message UUID and ce_id are kept equal: an empty ID is taken from
// msg.UUID, a non-empty one replaces it. Apply does not validate e.
func (e Envelope) Apply(msg *message.Message) {
	if msg.Metadata == nil {
		msg.Metadata = make(message.Metadata, 12)
	}
	md := msg.Metadata
	for k := range md {
		if k == KeyDataContentType || strings.HasPrefix(k, KafkaPrefix) {
			delete(md, k)
		}
	}
	for name, v := range e.Extensions {
		md[KafkaPrefix+name] = v
	}
	if e.ID == "" {
		e.ID = msg.UUID
	} else {
		msg.UUID = e.ID
	}
	if e.SpecVersion == "" {
		e.SpecVersion = SpecVersion
	}
	set := func(k, v string) {
		if v != "" {
			md[k] = v
		}
	}
	set(KeyID, e.ID)
	set(KeySource, e.Source)
	set(KeySpecVersion, e.SpecVersion)
	set(KeyType, e.Type)
	if !e.Time.IsZero() {
		md[KeyTime] = e.Time.UTC().Format(time.RFC3339Nano)
	}
	set(KeySubject, e.Subject)
	set(KeyDataContentType, e.DataContentType)
	set(KeyDataSchema, e.DataSchema)
	if e.DataVersion != 0 {
		md[KeyDataVersion] = strconv.Itoa(e.DataVersion)
	}
	set(KeyCorrelationID, e.CorrelationID)
	set(KeyCausationID, e.CausationID)
	set(KeyPartitionKey, e.PartitionKey)
}

// FromMetadata reads a binary-mode envelope from Watermill metadata (the
// Kafka headers, or what bus/amqp.FromHeaders returned) and validates it. Keys
// ce_x that have no Envelope field become Extensions; content-type is the
// data content type (ce_datacontenttype is accepted when content-type is
// absent). Empty values count as absent.
//
// Errors are [*Error] with code [CodeEnvelopeInvalid].
func FromMetadata(md message.Metadata) (Envelope, error) {
	var (
		e                      Envelope
		rawTime, rawVer, ctAlt string
	)
	for k, v := range md {
		if k == KeyDataContentType {
			e.DataContentType = v
			continue
		}
		name, ok := strings.CutPrefix(k, KafkaPrefix)
		if !ok || (v == "" && reserved[name]) {
			continue
		}
		switch name {
		case "id":
			e.ID = v
		case "source":
			e.Source = v
		case "specversion":
			e.SpecVersion = v
		case "type":
			e.Type = v
		case "time":
			rawTime = v
		case "subject":
			e.Subject = v
		case "datacontenttype":
			ctAlt = v
		case "dataschema":
			e.DataSchema = v
		case "dataversion":
			rawVer = v
		case "correlationid":
			e.CorrelationID = v
		case "causationid":
			e.CausationID = v
		case "partitionkey":
			e.PartitionKey = v
		default:
			if e.Extensions == nil {
				e.Extensions = make(map[string]string)
			}
			e.Extensions[name] = v
		}
	}
	if e.DataContentType == "" {
		e.DataContentType = ctAlt
	}
	var errs []error
	if rawTime != "" {
		t, err := time.Parse(time.RFC3339Nano, rawTime)
		if err != nil {
			errs = append(errs, fmt.Errorf("time %q is not an RFC 3339 timestamp", rawTime))
		}
		e.Time = t
	}
	if rawVer != "" {
		n, err := strconv.Atoi(rawVer)
		if err != nil || n < 1 || n > math.MaxInt32 {
			errs = append(errs, fmt.Errorf("dataversion %q is not an integer from 1 to %d", rawVer, math.MaxInt32))
		} else {
			e.DataVersion = n
		}
	}
	if err := e.Validate(); err != nil {
		errs = append(errs, err.(*Error).Err)
	}
	if len(errs) > 0 {
		return e, newError(CodeEnvelopeInvalid, e.Type, e.DataVersion, errors.Join(errs...))
	}
	return e, nil
}

// FromMessage reads the envelope of msg and returns it with the event data.
// The content mode is chosen by the content-type metadata, as the
// CloudEvents bindings say: a type starting with application/cloudevents
// (case-insensitive) is structured mode, anything else binary mode.
//
// In binary mode the envelope comes from the metadata ([FromMetadata]) and
// data is msg.Payload itself (not a copy: do not modify it). In structured
// mode (only the JSON event format, [ContentTypeStructured]) attributes and
// data come from the JSON body: data as raw JSON when the data content type
// is JSON (or absent, which then reads as application/json), the string's
// text when data is a JSON string of another content type, or the decoded
// data_base64. Structured data is always a new slice.
//
// msg is never modified. Errors are [*Error] with code
// [CodeEnvelopeInvalid].
func FromMessage(msg *message.Message) (Envelope, []byte, error) {
	if ct := msg.Metadata[KeyDataContentType]; isStructured(ct) {
		return fromStructured(ct, msg.Payload)
	}
	e, err := FromMetadata(msg.Metadata)
	return e, msg.Payload, err
}

func isStructured(ct string) bool {
	return len(ct) >= len(contentTypeCEPrefix) && strings.EqualFold(ct[:len(contentTypeCEPrefix)], contentTypeCEPrefix)
}

func invalid(format string, args ...any) *Error {
	return newError(CodeEnvelopeInvalid, "", 0, fmt.Errorf(format, args...))
}

// fromStructured parses a structured-mode CloudEvent in the JSON format.
func fromStructured(ct string, body []byte) (Envelope, []byte, error) {
	mediaType := strings.ToLower(strings.TrimSpace(strings.SplitN(ct, ";", 2)[0]))
	if mediaType != ContentTypeStructured {
		return Envelope{}, nil, invalid("structured content type %q is not supported (only %s)", ct, ContentTypeStructured)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		return Envelope{}, nil, invalid("structured event is not a JSON object: %v", err)
	}
	md := make(message.Metadata, len(raw))
	var errs []error
	for name, v := range raw {
		if name == "data" || name == "data_base64" || isJSONNull(v) {
			continue
		}
		s, err := attributeString(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("attribute %q: %w", name, err))
			continue
		}
		if name == "datacontenttype" {
			md[KeyDataContentType] = s
		} else {
			md[KafkaPrefix+name] = s
		}
	}
	var data []byte
	dataRaw, hasData := raw["data"]
	b64Raw, hasB64 := raw["data_base64"]
	hasData = hasData && !isJSONNull(dataRaw)
	hasB64 = hasB64 && !isJSONNull(b64Raw)
	switch {
	case hasData && hasB64:
		errs = append(errs, errors.New("both data and data_base64 are present"))
	case hasB64:
		var s string
		if err := json.Unmarshal(b64Raw, &s); err != nil {
			errs = append(errs, errors.New("data_base64 is not a string"))
			break
		}
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("data_base64: %v", err))
			break
		}
		data = b
	case hasData:
		if md[KeyDataContentType] == "" {
			md[KeyDataContentType] = "application/json"
		}
		data = []byte(dataRaw)
		if !isJSONMediaType(md[KeyDataContentType]) && len(dataRaw) > 0 && dataRaw[0] == '"' {
			var s string
			if err := json.Unmarshal(dataRaw, &s); err == nil {
				data = []byte(s)
			}
		}
	}
	e, err := FromMetadata(md)
	if err != nil {
		errs = append(errs, err.(*Error).Err)
	}
	if len(errs) > 0 {
		slices.SortFunc(errs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
		return e, nil, newError(CodeEnvelopeInvalid, e.Type, e.DataVersion, errors.Join(errs...))
	}
	return e, data, nil
}

// attributeString returns the canonical string of a JSON attribute value:
// a string's text, a number's literal, true or false.
func attributeString(v json.RawMessage) (string, error) {
	switch {
	case len(v) == 0:
		return "", errors.New("empty value")
	case v[0] == '"':
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return "", err
		}
		return s, nil
	case string(v) == "true" || string(v) == "false":
		return string(v), nil
	case v[0] == '-' || (v[0] >= '0' && v[0] <= '9'):
		var n json.Number
		if err := json.Unmarshal(v, &n); err != nil {
			return "", err
		}
		return n.String(), nil
	default:
		return "", errors.New("not a string, number or boolean")
	}
}

func isJSONNull(v json.RawMessage) bool { return string(v) == "null" }

// isJSONMediaType reports whether ct is JSON: application/json, text/json or
// any type with a +json suffix, parameters ignored.
func isJSONMediaType(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	mt = strings.ToLower(strings.TrimSpace(mt))
	return mt == "application/json" || mt == "text/json" || strings.HasSuffix(mt, "+json")
}

// isExtensionName reports whether name uses only a-z and 0-9 (the MUST rule
// of CloudEvents attribute names).
func isExtensionName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// isText reports whether s is valid UTF-8 without control characters.
func isText(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f || c >= 0x80 {
			return isTextSlow(s)
		}
	}
	return true
}

func isTextSlow(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			return false
		}
	}
	return true
}

// isURIReference reports whether s is a URI-reference of RFC 3986: only
// URI characters, well-formed percent-escapes, at most one '#', and a valid
// scheme when a ':' comes before the first '/', '?' or '#'.
func isURIReference(s string) bool {
	_, ok := uriScheme(s)
	return ok
}

// isAbsoluteURI reports whether s is a URI-reference with a scheme.
func isAbsoluteURI(s string) bool {
	scheme, ok := uriScheme(s)
	return ok && scheme
}

func uriScheme(s string) (hasScheme, ok bool) {
	if s == "" {
		return false, false
	}
	hashes := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '%':
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return false, false
			}
			i += 2
		case c == '#':
			hashes++
		case !isURIChar(c):
			return false, false
		}
	}
	if hashes > 1 {
		return false, false
	}
	end := strings.IndexAny(s, ":/?#")
	if end < 0 || s[end] != ':' {
		return false, true
	}
	// A ':' before any '/', '?' or '#' ends a scheme.
	if end == 0 || !isAlpha(s[0]) {
		return false, false
	}
	for i := 1; i < end; i++ {
		c := s[i]
		if !isAlpha(c) && (c < '0' || c > '9') && c != '+' && c != '-' && c != '.' {
			return false, false
		}
	}
	return true, true
}

func isAlpha(c byte) bool { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') }

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// isURIChar reports whether c may appear literally in a URI: unreserved,
// gen-delims or sub-delims.
func isURIChar(c byte) bool { return uriChars[c] }

var uriChars = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range []byte("-._~:/?#[]@!$&'()*+,;=") {
		t[c] = true
	}
	return t
}()
