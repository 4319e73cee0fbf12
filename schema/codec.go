package schema

import (
	"encoding/json"
	"strings"
)

// Codec turns values of registered Go types into event data and back. A
// Codec must be safe for concurrent use, and Unmarshal must not modify or
// keep data (it may be the message payload).
type Codec interface {
	// ContentType is the media type of what Marshal produces, such as
	// "application/json". It becomes the events' datacontenttype.
	ContentType() string
	// Marshal encodes v.
	Marshal(v any) ([]byte, error)
	// Unmarshal decodes data into v, a non-nil pointer.
	Unmarshal(data []byte, v any) error
}

// JSON is the default codec: encoding/json with content type
// application/json.
var JSON Codec = jsonCodec{}

type jsonCodec struct{}

func (jsonCodec) ContentType() string                { return "application/json" }
func (jsonCodec) Marshal(v any) ([]byte, error)      { return json.Marshal(v) }
func (jsonCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }

// contentTypeMatches reports whether data of media type got can be read by a
// codec of media type want: equal base types (parameters and case
// ignored), any JSON type for a JSON codec, or got empty.
func contentTypeMatches(got, want string) bool {
	if got == "" {
		return true
	}
	g, w := mediaBase(got), mediaBase(want)
	if strings.EqualFold(g, w) {
		return true
	}
	return isJSONMediaType(w) && isJSONMediaType(g)
}

func mediaBase(ct string) string {
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return strings.TrimSpace(ct)
}
