package schema_test

import (
	"maps"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/busline/busline/schema"
)

func TestAMQPHeadersRoundTrip(t *testing.T) {
	md := message.Metadata{
		schema.KeyID:              "0192b3a0-0000-7000-8000-000000000001",
		schema.KeySource:          "/orders",
		schema.KeySpecVersion:     "1.0",
		schema.KeyType:            "com.example.order.created",
		schema.KeyTime:            "2026-01-02T03:04:05.123456789Z",
		schema.KeyDataVersion:     "3",
		schema.KeyCorrelationID:   "corr-1",
		schema.KeyDataContentType: "application/json",
		"traceparent":             "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"busline_dlq_reason":      "decode_failed",
	}
	h, ct := schema.ToAMQPHeaders(md)
	if ct != "application/json" {
		t.Errorf("content type = %q", ct)
	}
	want := amqp091.Table{
		"cloudEvents_id":            "0192b3a0-0000-7000-8000-000000000001",
		"cloudEvents_source":        "/orders",
		"cloudEvents_specversion":   "1.0",
		"cloudEvents_type":          "com.example.order.created",
		"cloudEvents_time":          "2026-01-02T03:04:05.123456789Z",
		"cloudEvents_dataversion":   "3",
		"cloudEvents_correlationid": "corr-1",
		"traceparent":               "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"busline_dlq_reason":        "decode_failed",
	}
	if !maps.Equal(h, want) {
		t.Errorf("headers = %v\nwant %v", h, want)
	}
	if err := h.Validate(); err != nil {
		t.Errorf("headers not valid for amqp091: %v", err)
	}
	back := schema.FromAMQPHeaders(h, ct)
	if !maps.Equal(back, md) {
		t.Errorf("round trip = %v\nwant %v", back, md)
	}
}

func TestToAMQPHeadersDropsTransportKeys(t *testing.T) {
	h, _ := schema.ToAMQPHeaders(message.Metadata{
		schema.AMQPTransportPrefix + "delivery_tag": "7",
		"busline_dlq_reason":                        "x",
	})
	if _, ok := h[schema.AMQPTransportPrefix+"delivery_tag"]; ok || len(h) != 1 {
		t.Errorf("headers = %v", h)
	}
	if h, ct := schema.ToAMQPHeaders(nil); h == nil || len(h) != 0 || ct != "" {
		t.Errorf("nil metadata: %v %q", h, ct)
	}
}

func TestFromAMQPHeadersTyped(t *testing.T) {
	ts := time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600))
	h := amqp091.Table{
		"cloudEvents:id":          "colon-id",
		"cloudEvents:source":      "/colon",
		"cloudEvents_source":      "/underscore", // wins over the colon form
		"ce_type":                 "literal",     // loses to the prefixed form
		"cloudEvents:type":        "com.example.t",
		"cloudEvents_dataversion": int64(2),
		"cloudEvents_time":        ts,
		"cloudEvents_flag":        true,
		"cloudEvents_ratio":       float64(0.5),
		"cloudEvents_small":       int32(-7),
		"cloudEvents_bin":         []byte{0xff, 0x00},
		"cloudEvents_text":        []byte("hi"),
		"price":                   amqp091.Decimal{Scale: 2, Value: -12345},
		"tiny":                    amqp091.Decimal{Scale: 4, Value: 5},
		"nothing":                 nil,
		"x-death": []any{
			amqp091.Table{
				"count":        int64(1),
				"reason":       "rejected",
				"queue":        "orders",
				"time":         ts,
				"exchange":     "",
				"routing-keys": []any{"orders"},
			},
		},
		"x-first-death-reason": "rejected",
	}
	md := schema.FromAMQPHeaders(h, "application/json")
	want := message.Metadata{
		"ce_id":                "colon-id",
		"ce_source":            "/underscore",
		"ce_type":              "com.example.t",
		"ce_dataversion":       "2",
		"ce_time":              "2026-01-02T02:04:05Z",
		"ce_flag":              "true",
		"ce_ratio":             "0.5",
		"ce_small":             "-7",
		"ce_bin":               "/wA=",
		"ce_text":              "hi",
		"price":                "-123.45",
		"tiny":                 "0.0005",
		"nothing":              "",
		"x-death":              `[{"count":1,"exchange":"","queue":"orders","reason":"rejected","routing-keys":["orders"],"time":"2026-01-02T02:04:05Z"}]`,
		"x-first-death-reason": "rejected",
		"content-type":         "application/json",
	}
	if !maps.Equal(md, want) {
		for k, v := range want {
			if md[k] != v {
				t.Errorf("%s = %q, want %q", k, md[k], v)
			}
		}
		for k, v := range md {
			if _, ok := want[k]; !ok {
				t.Errorf("unexpected %s = %q", k, v)
			}
		}
	}
	// Stable: the same table always gives the same string.
	for range 20 {
		if got := schema.FromAMQPHeaders(h, "")["x-death"]; got != want["x-death"] {
			t.Fatalf("x-death not stable: %s", got)
		}
	}
}

func TestFromAMQPHeadersDeepNesting(t *testing.T) {
	var v any = "leaf"
	for range 100 {
		v = amqp091.Table{"n": []any{v}}
	}
	md := schema.FromAMQPHeaders(amqp091.Table{"deep": v}, "")
	if md["deep"] == "" {
		t.Fatal("deep table lost")
	}
}

func TestKafkaMetadataNeedsNoMapping(t *testing.T) {
	// Kafka headers are the metadata: what Apply writes is what FromMetadata reads.
	env := schema.Envelope{
		ID: "id-1", Source: "/s", SpecVersion: "1.0", Type: "com.example.t",
		DataVersion: 1, DataContentType: "application/json",
	}
	msg := message.NewMessage("id-1", []byte(`{}`))
	env.Apply(msg)
	headers := maps.Clone(msg.Metadata) // what watermill-kafka writes as record headers
	got, err := schema.FromMetadata(headers)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != env.ID || got.Type != env.Type || got.DataVersion != 1 {
		t.Errorf("got %+v", got)
	}
}
