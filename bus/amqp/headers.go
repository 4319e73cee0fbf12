package amqp

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/busline/busline/schema"
)

// maxNesting bounds how deep [FromHeaders] descends into nested tables
// and arrays before it summarises the rest.
const maxNesting = 16

// ToHeaders maps Watermill metadata to an AMQP 0-9-1 headers table and
// the content_type basic property, following the CloudEvents AMQP binding as
// RabbitMQ carries it: each ce_x key becomes the header cloudEvents_x, the
// content-type key becomes contentType (and no header), keys starting with
// [schema.AMQPTransportPrefix] are dropped, and every other key (traceparent,
// busline_ keys, ...) is kept as it is. All header values are strings.
//
// The returned table is new; md is not modified. A nil or empty md gives an
// empty, non-nil table.
func ToHeaders(md message.Metadata) (headers amqp091.Table, contentType string) {
	headers = make(amqp091.Table, len(md))
	for k, v := range md {
		switch {
		case k == schema.KeyDataContentType:
			contentType = v
		case strings.HasPrefix(k, schema.KafkaPrefix):
			headers[schema.AMQPPrefix+k[len(schema.KafkaPrefix):]] = v
		case strings.HasPrefix(k, schema.AMQPTransportPrefix):
		default:
			headers[k] = v
		}
	}
	return headers, contentType
}

// FromHeaders maps an AMQP 0-9-1 headers table and the content_type
// property back to Watermill metadata. It is total: it never fails and never
// panics, whatever the table holds, so a transport unmarshaler built on it
// cannot loop on a message it cannot read; invalid envelopes are rejected
// later, by [FromMessage], where a dead-letter middleware can act.
//
// Headers cloudEvents_x and cloudEvents:x become ce_x (when both are
// present, cloudEvents_x wins; both win over a literal ce_x header). A
// non-empty contentType becomes the content-type key and wins over a
// content-type header. Other headers keep their names. Values are
// stringified with [ValueString]: typed values in their canonical
// string form, nested tables and arrays (such as RabbitMQ's x-death) as
// JSON.
func FromHeaders(h amqp091.Table, contentType string) message.Metadata {
	md := make(message.Metadata, len(h)+1)
	// Three passes give a fixed precedence independent of map order:
	// plain names, then cloudEvents:, then cloudEvents_.
	for k, v := range h {
		if !strings.HasPrefix(k, schema.AMQPPrefix) && !strings.HasPrefix(k, schema.AMQPAltPrefix) {
			md[k] = ValueString(v)
		}
	}
	for k, v := range h {
		if name, ok := strings.CutPrefix(k, schema.AMQPAltPrefix); ok {
			md[schema.KafkaPrefix+name] = ValueString(v)
		}
	}
	for k, v := range h {
		if name, ok := strings.CutPrefix(k, schema.AMQPPrefix); ok {
			md[schema.KafkaPrefix+name] = ValueString(v)
		}
	}
	if contentType != "" {
		md[schema.KeyDataContentType] = contentType
	}
	return md
}

// ValueString returns the canonical string form of an AMQP 0-9-1 field
// value. Strings are returned as they are; booleans as true/false; integers
// in decimal; floats in the shortest form that round-trips (NaN, +Inf,
// -Inf for the non-finite ones); [amqp091.Decimal] as a decimal number
// (Value 12345, Scale 2 gives 123.45); time.Time in UTC as RFC 3339 (with
// fractional seconds only when present); []byte as its text when it is valid
// UTF-8, else standard base64; nil as the empty string; tables and arrays as
// compact JSON with sorted keys, the values inside converted the same way
// (strings, numbers, booleans, null). It never panics.
func ValueString(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		return v
	case bool:
		return strconv.FormatBool(v)
	case int:
		return strconv.Itoa(v)
	case int8:
		return strconv.FormatInt(int64(v), 10)
	case int16:
		return strconv.FormatInt(int64(v), 10)
	case int32:
		return strconv.FormatInt(int64(v), 10)
	case int64:
		return strconv.FormatInt(v, 10)
	case uint8:
		return strconv.FormatUint(uint64(v), 10)
	case uint16:
		return strconv.FormatUint(uint64(v), 10)
	case uint32:
		return strconv.FormatUint(uint64(v), 10)
	case uint64:
		return strconv.FormatUint(v, 10)
	case float32:
		return strconv.FormatFloat(float64(v), 'g', -1, 32)
	case float64:
		return strconv.FormatFloat(v, 'g', -1, 64)
	case amqp091.Decimal:
		return decimalString(v)
	case time.Time:
		return v.UTC().Format(time.RFC3339Nano)
	case []byte:
		return bytesString(v)
	case amqp091.Table, map[string]any, []any:
		b, err := json.Marshal(jsonValue(v, 0))
		if err != nil {
			// jsonValue yields only JSON-safe values; keep the function total anyway.
			return fmt.Sprintf("%T", v)
		}
		return string(b)
	default:
		return fmt.Sprint(v)
	}
}

func bytesString(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return base64.StdEncoding.EncodeToString(b)
}

func decimalString(d amqp091.Decimal) string {
	n := int64(d.Value)
	neg := n < 0
	if neg {
		n = -n
	}
	digits := strconv.FormatInt(n, 10)
	scale := int(d.Scale)
	var s string
	switch {
	case scale == 0:
		s = digits
	case len(digits) > scale:
		s = digits[:len(digits)-scale] + "." + digits[len(digits)-scale:]
	default:
		s = "0." + strings.Repeat("0", scale-len(digits)) + digits
	}
	if neg {
		s = "-" + s
	}
	return s
}

// jsonValue converts an AMQP field value to a value encoding/json can always
// marshal, descending at most maxNesting levels.
func jsonValue(v any, depth int) any {
	if depth >= maxNesting {
		return "..."
	}
	switch v := v.(type) {
	case nil, string, bool, int, int8, int16, int32, int64, uint8, uint16, uint32, uint64:
		return v
	case float32:
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return ValueString(v)
		}
		return json.Number(strconv.FormatFloat(float64(v), 'g', -1, 32))
	case float64:
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return ValueString(v)
		}
		return v
	case amqp091.Decimal:
		return json.Number(decimalString(v))
	case amqp091.Table:
		return jsonMap(v, depth)
	case map[string]any:
		return jsonMap(v, depth)
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = jsonValue(e, depth+1)
		}
		return out
	default:
		// time.Time, []byte and anything else: its string form.
		return ValueString(v)
	}
}

func jsonMap(m map[string]any, depth int) map[string]any {
	out := make(map[string]any, len(m))
	for k, e := range m {
		out[k] = jsonValue(e, depth+1)
	}
	return out
}
