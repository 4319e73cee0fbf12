package schema_test

import (
	"errors"
	"maps"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/internal/ordertest"
	"github.com/busline/busline/middleware"
	"github.com/busline/busline/schema"
)

func validEnvelope() schema.Envelope {
	return schema.Envelope{
		ID:              "0192b3a0-0000-7000-8000-000000000001",
		Source:          "https://acme.example/services/orders",
		SpecVersion:     "1.0",
		Type:            ordertest.Created,
		Time:            time.Date(2026, 3, 4, 5, 6, 7, 890000000, time.UTC),
		Subject:         "order-42",
		DataContentType: "application/json",
		DataSchema:      "https://schemas.acme.example/events/com.example.order.created/v3.json",
		DataVersion:     3,
		CorrelationID:   "corr-1",
		CausationID:     "cause-1",
		PartitionKey:    "customer-7",
		Extensions:      map[string]string{"tenant": "acme", "sequence": "12"},
	}
}

func TestEnvelopeValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*schema.Envelope)
		want   []string // substrings of the error; none means valid
	}{
		{"valid", func(*schema.Envelope) {}, nil},
		{"minimal", func(e *schema.Envelope) {
			*e = schema.Envelope{ID: "1", Source: "/s", SpecVersion: "1.0", Type: "t"}
		}, nil},
		{"source urn", func(e *schema.Envelope) { e.Source = "urn:acme:orders" }, nil},
		{"source relative path", func(e *schema.Envelope) { e.Source = "orders/eu" }, nil},
		{"source percent escape", func(e *schema.Envelope) { e.Source = "/a%20b" }, nil},
		{"dataschema with fragment", func(e *schema.Envelope) { e.DataSchema = "https://x.example/s.json#/defs/a" }, nil},
		{"no version is not an envelope problem", func(e *schema.Envelope) { e.DataVersion = 0 }, nil},
		{"missing id", func(e *schema.Envelope) { e.ID = "" }, []string{"id is required"}},
		{"missing everything", func(e *schema.Envelope) { *e = schema.Envelope{} }, []string{
			"id is required", "source is required", "specversion is required", "type is required"}},
		{"specversion", func(e *schema.Envelope) { e.SpecVersion = "0.3" }, []string{`specversion "0.3"`}},
		{"source with space", func(e *schema.Envelope) { e.Source = "/a b" }, []string{"source"}},
		{"source bad scheme", func(e *schema.Envelope) { e.Source = "1http://x" }, []string{"source"}},
		{"source bad escape", func(e *schema.Envelope) { e.Source = "/a%2" }, []string{"source"}},
		{"source two fragments", func(e *schema.Envelope) { e.Source = "/a#b#c" }, []string{"source"}},
		{"relative dataschema", func(e *schema.Envelope) { e.DataSchema = "/schemas/v1.json" }, []string{"dataschema"}},
		{"negative version", func(e *schema.Envelope) { e.DataVersion = -1 }, []string{"dataversion -1"}},
		{"huge version", func(e *schema.Envelope) { e.DataVersion = 1 << 31 }, []string{"dataversion"}},
		{"extension upper case", func(e *schema.Envelope) { e.Extensions["Tenant"] = "x" }, []string{`"Tenant"`}},
		{"extension underscore", func(e *schema.Envelope) { e.Extensions["data_base64"] = "x" }, []string{`"data_base64"`}},
		{"extension reserved", func(e *schema.Envelope) { e.Extensions["subject"] = "x" }, []string{`"subject" is an attribute`}},
		{"extension data", func(e *schema.Envelope) { e.Extensions["data"] = "x" }, []string{`"data" is an attribute`}},
		{"control character", func(e *schema.Envelope) { e.Subject = "a\nb" }, []string{"subject"}},
		{"invalid utf8", func(e *schema.Envelope) { e.Type = "t\xff" }, []string{"type"}},
		{"several problems at once", func(e *schema.Envelope) {
			e.SpecVersion = "2.0"
			e.DataSchema = "rel"
			e.Extensions["X"] = ""
		}, []string{"specversion", "dataschema", `"X"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := validEnvelope()
			e.Extensions = maps.Clone(e.Extensions)
			tt.modify(&e)
			err := e.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want %q", tt.want)
			}
			assertCode(t, err, schema.CodeEnvelopeInvalid)
			if !errors.Is(err, schema.ErrEnvelopeInvalid) {
				t.Errorf("errors.Is(err, ErrEnvelopeInvalid) = false")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func assertCode(t *testing.T, err error, code string) {
	t.Helper()
	var se *schema.Error
	if !errors.As(err, &se) {
		t.Fatalf("error %v (%T) is not a *schema.Error", err, err)
	}
	if se.Code != code || se.ErrorType() != code {
		t.Errorf("code = %q, want %q (error %v)", se.Code, code, err)
	}
	if !middleware.IsPermanent(err) {
		t.Errorf("error %v is not permanent", err)
	}
}

func TestEnvelopeMetadataRoundTrip(t *testing.T) {
	env := validEnvelope()
	msg := message.NewMessage("ignored", []byte(`{"order_id":"42"}`))
	msg.Metadata["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	msg.Metadata["ce_stale"] = "removed by Apply"
	env.Apply(msg)

	if msg.UUID != env.ID || msg.Metadata[schema.KeyID] != env.ID {
		t.Errorf("UUID %q and ce_id %q must both be %q", msg.UUID, msg.Metadata[schema.KeyID], env.ID)
	}
	want := message.Metadata{
		"ce_id":            env.ID,
		"ce_source":        env.Source,
		"ce_specversion":   "1.0",
		"ce_type":          ordertest.Created,
		"ce_time":          "2026-03-04T05:06:07.89Z",
		"ce_subject":       "order-42",
		"content-type":     "application/json",
		"ce_dataschema":    env.DataSchema,
		"ce_dataversion":   "3",
		"ce_correlationid": "corr-1",
		"ce_causationid":   "cause-1",
		"ce_partitionkey":  "customer-7",
		"ce_tenant":        "acme",
		"ce_sequence":      "12",
		"traceparent":      "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
	}
	if !maps.Equal(msg.Metadata, want) {
		t.Errorf("metadata = %v\nwant %v", msg.Metadata, want)
	}

	got, data, err := schema.FromMessage(msg)
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != `{"order_id":"42"}` {
		t.Errorf("data = %s", data)
	}
	if !reflect.DeepEqual(got, env) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, env)
	}

	// Through RabbitMQ headers and back.
	h, ct := amqp.ToHeaders(msg.Metadata)
	got2, err := schema.FromMetadata(amqp.FromHeaders(h, ct))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got2, env) {
		t.Errorf("AMQP round trip:\n got %+v\nwant %+v", got2, env)
	}
}

func TestApplyEmptyIDUsesMessageUUID(t *testing.T) {
	msg := message.NewMessage("uuid-1", nil)
	schema.Envelope{Source: "/s", Type: "t"}.Apply(msg)
	if msg.Metadata[schema.KeyID] != "uuid-1" || msg.Metadata[schema.KeySpecVersion] != "1.0" {
		t.Errorf("metadata = %v", msg.Metadata)
	}
}

func TestFromMetadataInvalid(t *testing.T) {
	base := func() message.Metadata {
		return message.Metadata{"ce_id": "1", "ce_source": "/s", "ce_specversion": "1.0", "ce_type": "t"}
	}
	tests := []struct {
		name string
		k, v string
		want string
	}{
		{"bad time", "ce_time", "yesterday", "time"},
		{"time without zone", "ce_time", "2026-01-02T03:04:05", "time"},
		{"version text", "ce_dataversion", "three", "dataversion"},
		{"version zero", "ce_dataversion", "0", "dataversion"},
		{"version overflow", "ce_dataversion", "99999999999", "dataversion"},
		{"bad extension", "ce_Tenant", "x", "Tenant"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			md := base()
			md[tt.k] = tt.v
			_, err := schema.FromMetadata(md)
			if err == nil {
				t.Fatal("no error")
			}
			assertCode(t, err, schema.CodeEnvelopeInvalid)
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q lacks %q", err, tt.want)
			}
		})
	}
	// A missing required attribute and a bad time are reported together.
	md := base()
	delete(md, "ce_source")
	md["ce_time"] = "x"
	_, err := schema.FromMetadata(md)
	if err == nil || !strings.Contains(err.Error(), "source is required") || !strings.Contains(err.Error(), "time") {
		t.Errorf("error = %v", err)
	}
}

func TestFromMessageStructured(t *testing.T) {
	tests := []struct {
		name     string
		ct, body string
		data     string
		check    func(t *testing.T, e schema.Envelope)
	}{
		{
			name: "json data",
			ct:   "application/cloudevents+json; charset=UTF-8",
			body: `{"specversion":"1.0","id":"e-1","source":"https://other.example/producer",
				"type":"com.example.order.created","time":"2026-01-02T03:04:05Z","subject":"o-1",
				"dataversion":2,"correlationid":"c-1","sequence":7,"urgent":true,"comment":null,
				"data":{"id":"o-1", "amount_cents":1250}}`,
			data: `{"id":"o-1", "amount_cents":1250}`,
			check: func(t *testing.T, e schema.Envelope) {
				if e.ID != "e-1" || e.Type != ordertest.Created || e.DataVersion != 2 || e.Subject != "o-1" ||
					e.CorrelationID != "c-1" || e.DataContentType != "application/json" ||
					!e.Time.Equal(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) ||
					!maps.Equal(e.Extensions, map[string]string{"sequence": "7", "urgent": "true"}) {
					t.Errorf("envelope = %+v", e)
				}
			},
		},
		{
			name: "version as string",
			ct:   "Application/CloudEvents+JSON",
			body: `{"specversion":"1.0","id":"e-1","source":"/p","type":"t","dataversion":"3","data":[1,2]}`,
			data: `[1,2]`,
			check: func(t *testing.T, e schema.Envelope) {
				if e.DataVersion != 3 {
					t.Errorf("version = %d", e.DataVersion)
				}
			},
		},
		{
			name: "base64 data",
			ct:   "application/cloudevents+json",
			body: `{"specversion":"1.0","id":"e-1","source":"/p","type":"t","datacontenttype":"application/octet-stream","data_base64":"AAEC/w=="}`,
			data: "\x00\x01\x02\xff",
			check: func(t *testing.T, e schema.Envelope) {
				if e.DataContentType != "application/octet-stream" {
					t.Errorf("content type = %q", e.DataContentType)
				}
			},
		},
		{
			name: "text data",
			ct:   "application/cloudevents+json",
			body: `{"specversion":"1.0","id":"e-1","source":"/p","type":"t","datacontenttype":"text/plain","data":"hello \"world\""}`,
			data: `hello "world"`,
		},
		{
			name: "no data",
			ct:   "application/cloudevents+json",
			body: `{"specversion":"1.0","id":"e-1","source":"/p","type":"t"}`,
			data: ``,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := message.NewMessage("uuid", []byte(tt.body))
			msg.Metadata[schema.KeyDataContentType] = tt.ct
			before := string(msg.Payload)
			e, data, err := schema.FromMessage(msg)
			if err != nil {
				t.Fatal(err)
			}
			if string(data) != tt.data {
				t.Errorf("data = %q, want %q", data, tt.data)
			}
			if string(msg.Payload) != before {
				t.Error("payload modified")
			}
			if tt.check != nil {
				tt.check(t, e)
			}
		})
	}
}

func TestFromMessageStructuredInvalid(t *testing.T) {
	tests := []struct{ name, ct, body, want string }{
		{"not json", "application/cloudevents+json", `{"id":`, "not a JSON object"},
		{"array", "application/cloudevents+json", `[]`, "not a JSON object"},
		{"batch", "application/cloudevents-batch+json", `[]`, "not supported"},
		{"other format", "application/cloudevents+avro", `x`, "not supported"},
		{"both data forms", "application/cloudevents+json",
			`{"specversion":"1.0","id":"1","source":"/p","type":"t","data":1,"data_base64":"AA=="}`, "both data"},
		{"bad base64", "application/cloudevents+json",
			`{"specversion":"1.0","id":"1","source":"/p","type":"t","data_base64":"%%"}`, "data_base64"},
		{"object attribute", "application/cloudevents+json",
			`{"specversion":"1.0","id":{"a":1},"source":"/p","type":"t"}`, `"id"`},
		{"missing type", "application/cloudevents+json",
			`{"specversion":"1.0","id":"1","source":"/p"}`, "type is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := message.NewMessage("uuid", []byte(tt.body))
			msg.Metadata[schema.KeyDataContentType] = tt.ct
			_, _, err := schema.FromMessage(msg)
			if err == nil {
				t.Fatal("no error")
			}
			assertCode(t, err, schema.CodeEnvelopeInvalid)
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q lacks %q", err, tt.want)
			}
			if string(msg.Payload) != tt.body {
				t.Error("payload modified")
			}
		})
	}
}

func TestErrorSentinels(t *testing.T) {
	err := &schema.Error{Code: schema.CodeVersionUnknown, Type: "t", Version: 4, Err: errors.New("newer")}
	if !errors.Is(err, schema.ErrUnknownVersion) || errors.Is(err, schema.ErrUnknownType) {
		t.Error("errors.Is by code broken")
	}
	if got := err.Error(); got != `schema: schema_version_unknown: type "t" version 4: newer` {
		t.Errorf("Error() = %q", got)
	}
	if !errors.Is(schema.ErrDecode, schema.ErrDecode) {
		t.Error("sentinel is not itself")
	}
}
