package amqp_test

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/schema"
)

// The AMQP header mapping (headers.go): tests, fuzz target and example,
// moved here with it from package schema.

func TestHeadersRoundTrip(t *testing.T) {
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
	h, ct := amqp.ToHeaders(md)
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
	back := amqp.FromHeaders(h, ct)
	if !maps.Equal(back, md) {
		t.Errorf("round trip = %v\nwant %v", back, md)
	}
}

func TestToHeadersDropsTransportKeys(t *testing.T) {
	h, _ := amqp.ToHeaders(message.Metadata{
		schema.AMQPTransportPrefix + "delivery_tag": "7",
		"busline_dlq_reason":                        "x",
	})
	if _, ok := h[schema.AMQPTransportPrefix+"delivery_tag"]; ok || len(h) != 1 {
		t.Errorf("headers = %v", h)
	}
	if h, ct := amqp.ToHeaders(nil); h == nil || len(h) != 0 || ct != "" {
		t.Errorf("nil metadata: %v %q", h, ct)
	}
}

func TestFromHeadersTyped(t *testing.T) {
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
	md := amqp.FromHeaders(h, "application/json")
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
		if got := amqp.FromHeaders(h, "")["x-death"]; got != want["x-death"] {
			t.Fatalf("x-death not stable: %s", got)
		}
	}
}

func TestFromHeadersDeepNesting(t *testing.T) {
	var v any = "leaf"
	for range 100 {
		v = amqp091.Table{"n": []any{v}}
	}
	md := amqp.FromHeaders(amqp091.Table{"deep": v}, "")
	if md["deep"] == "" {
		t.Fatal("deep table lost")
	}
}

// FuzzFromHeaders builds headers tables of every AMQP field type,
// nested like RabbitMQ's x-death, and checks that the mapping is total,
// keeps every header, and that its string output round-trips.
func FuzzFromHeaders(f *testing.F) {
	f.Add("id", "0192b3a0-0000-7000-8000-000000000001", int64(3), 1.5, []byte("text"), uint8(2), "application/json")
	f.Add("time", "2026-01-02T03:04:05Z", int64(-1), -0.0, []byte{0xff, 0xfe}, uint8(0), "")
	f.Add("", "", int64(1<<62), 1e308, []byte(nil), uint8(255), "application/cloudevents+json")
	f.Add("busline_amqp_delivery_tag", "x", int64(-2147483648), 5e-324, []byte("\x00"), uint8(10), "text/plain")
	f.Fuzz(func(t *testing.T, key, s string, i int64, fl float64, b []byte, scale uint8, ct string) {
		h := amqp091.Table{
			schema.AMQPPrefix + key:    s,
			schema.AMQPAltPrefix + key: b,
			key:                        i,
			"float":                    fl,
			"dec":                      amqp091.Decimal{Scale: scale, Value: int32(i)},
			"ts":                       time.Unix(i%(1<<33), 0),
			"x-death": []any{amqp091.Table{
				"count": i, "reason": s, "nested": []any{b, fl, nil, true, float32(fl), amqp091.Table{key: s}},
			}},
		}
		md := amqp.FromHeaders(h, ct)
		if md == nil {
			t.Fatal("nil metadata")
		}
		if md["x-death"] == "" || md["float"] == "" || md["ts"] == "" {
			t.Fatalf("nested or typed header lost: %v", md)
		}
		if _, ok := md[schema.KafkaPrefix+key]; !ok {
			t.Fatalf("cloudEvents_%s not mapped to ce_%s", key, key)
		}
		if again := amqp.FromHeaders(h, ct); !maps.Equal(again, md) {
			t.Fatal("mapping not deterministic")
		}
		headers, ct2 := amqp.ToHeaders(md)
		if err := headers.Validate(); err != nil {
			t.Fatalf("ToHeaders gave an invalid table: %v", err)
		}
		back := amqp.FromHeaders(headers, ct2)
		maps.DeleteFunc(md, func(k, _ string) bool { return strings.HasPrefix(k, schema.AMQPTransportPrefix) })
		if md[schema.KeyDataContentType] == "" {
			// An empty content type is no property: it is lost, as it should be.
			delete(md, schema.KeyDataContentType)
		}
		if !maps.Equal(back, md) {
			t.Fatalf("string round trip:\n got %v\nwant %v", back, md)
		}
	})
}

func ExampleFromHeaders() {
	// What a dead-lettered message can look like on RabbitMQ.
	h := amqp091.Table{
		"cloudEvents_id":          "e-1",
		"cloudEvents:source":      "/orders",
		"cloudEvents_type":        "com.acme.order.created",
		"cloudEvents_specversion": "1.0",
		"cloudEvents_dataversion": int64(3),
		"x-death": []any{amqp091.Table{
			"count": int64(1), "reason": "rejected", "queue": "orders",
		}},
	}
	md := amqp.FromHeaders(h, "application/json")
	for _, k := range slices.Sorted(maps.Keys(md)) {
		fmt.Printf("%s: %s\n", k, md[k])
	}
	headers, contentType := amqp.ToHeaders(md)
	fmt.Println(headers["cloudEvents_source"], contentType)
	// Output:
	// ce_dataversion: 3
	// ce_id: e-1
	// ce_source: /orders
	// ce_specversion: 1.0
	// ce_type: com.acme.order.created
	// content-type: application/json
	// x-death: [{"count":1,"queue":"orders","reason":"rejected"}]
	// /orders application/json
}
