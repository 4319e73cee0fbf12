package schema

import (
	"strconv"
	"strings"
)

// Error codes: the machine-readable reasons carried by [Error]. They are
// low-cardinality values fit for the OpenTelemetry error.type attribute and
// for the dead-letter reason header.
const (
	// CodeEnvelopeInvalid: the CloudEvents envelope is missing a required
	// attribute or holds a malformed one.
	CodeEnvelopeInvalid = "envelope_invalid"
	// CodeEventTypeUnknown: no Go type is registered for the event type (or
	// the Go type asked for is bound to another event type).
	CodeEventTypeUnknown = "event_type_unknown"
	// CodeVersionMissing: the event carries no dataversion and its type does
	// not assume one.
	CodeVersionMissing = "schema_version_missing"
	// CodeVersionUnknown: the dataversion is not registered for the type,
	// including a version newer than the current one.
	CodeVersionUnknown = "schema_version_unknown"
	// CodeUpcastFailed: an upcaster returned an error.
	CodeUpcastFailed = "upcast_failed"
	// CodeDecodeFailed: the codec could not decode the payload, or the
	// payload's content type is not the codec's.
	CodeDecodeFailed = "decode_failed"
	// CodeEncodeFailed: the codec could not encode a value for publishing.
	CodeEncodeFailed = "encode_failed"
)

// Sentinel errors, one per code, for use with errors.Is: an [*Error] is the
// sentinel of its code, whatever its other fields.
var (
	// ErrEnvelopeInvalid matches errors with code [CodeEnvelopeInvalid].
	ErrEnvelopeInvalid error = &Error{Code: CodeEnvelopeInvalid}
	// ErrUnknownType matches errors with code [CodeEventTypeUnknown].
	ErrUnknownType error = &Error{Code: CodeEventTypeUnknown}
	// ErrVersionMissing matches errors with code [CodeVersionMissing].
	ErrVersionMissing error = &Error{Code: CodeVersionMissing}
	// ErrUnknownVersion matches errors with code [CodeVersionUnknown],
	// including versions newer than the current one.
	ErrUnknownVersion error = &Error{Code: CodeVersionUnknown}
	// ErrUpcast matches errors with code [CodeUpcastFailed].
	ErrUpcast error = &Error{Code: CodeUpcastFailed}
	// ErrDecode matches errors with code [CodeDecodeFailed].
	ErrDecode error = &Error{Code: CodeDecodeFailed}
	// ErrEncode matches errors with code [CodeEncodeFailed].
	ErrEncode error = &Error{Code: CodeEncodeFailed}
)

// Error is the error of every schema operation that rejects an event. It is
// permanent: retrying the same message cannot succeed, so the retry
// middleware gives up at once and the dead-letter middleware moves the
// message to the dead-letter destination with Code as its reason.
type Error struct {
	// Code is one of the Code constants.
	Code string
	// Type is the event type concerned, if known.
	Type string
	// Version is the schema version concerned (as received, or the version
	// an upcaster started from), 0 if not known.
	Version int
	// Err is the underlying cause, if any.
	Err error
}

// Error returns "schema: <code>" followed by the type, version and cause
// when set.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("schema: ")
	b.WriteString(e.Code)
	if e.Type != "" {
		b.WriteString(": type ")
		b.WriteString(strconv.Quote(e.Type))
	}
	if e.Version != 0 {
		b.WriteString(" version ")
		b.WriteString(strconv.Itoa(e.Version))
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is the sentinel of e's code (see
// [ErrUnknownType] and the others).
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code && t.Type == "" && t.Version == 0 && t.Err == nil
}

// ErrorType returns Code, the machine-readable reason.
func (e *Error) ErrorType() string { return e.Code }

func newError(code, typ string, version int, err error) *Error {
	return &Error{Code: code, Type: typ, Version: version, Err: err}
}
