package schema_test

import (
	"context"
	"testing"

	"github.com/busline/busline/internal/ordertest"
	"github.com/busline/busline/schema"
)

// BenchmarkDecodeUpcast is the per-message consumer path for an old event:
// read the envelope, upcast v1 -> v2 -> v3, decode into the v3 Go type.
// The upcasters themselves (JSON decode + encode each) dominate.
func BenchmarkDecodeUpcast(b *testing.B) {
	r := newOrderRegistry()
	msg := v1Message(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := schema.DecodeAs[ordertest.V3](r, msg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeCurrent is the path of an event already at the current
// version: envelope + codec only.
func BenchmarkDecodeCurrent(b *testing.B) {
	r := newOrderRegistry()
	msg, err := r.NewMessage(context.Background(), ordertest.V3{OrderID: "o-1", AmountCents: 1250, Currency: "EUR"})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := schema.DecodeAs[ordertest.V3](r, msg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeAny is BenchmarkDecodeUpcast through Registry.Decode.
func BenchmarkDecodeAny(b *testing.B) {
	r := newOrderRegistry()
	msg := v1Message(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := r.Decode(msg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFromMessage reads and validates a binary-mode envelope.
func BenchmarkFromMessage(b *testing.B) {
	msg := v1Message(b)
	msg.Metadata[schema.KeySubject] = "order-1"
	msg.Metadata[schema.KeyCorrelationID] = "corr-1"
	msg.Metadata["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := schema.FromMessage(msg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNewMessage is the typed publishing path.
func BenchmarkNewMessage(b *testing.B) {
	r := newOrderRegistry()
	ctx := context.Background()
	v := ordertest.V3{OrderID: "o-1", AmountCents: 1250, Currency: "EUR"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.NewMessage(ctx, v); err != nil {
			b.Fatal(err)
		}
	}
}

// upcastOnly measures the upcasters alone, the floor of BenchmarkDecodeUpcast.
func BenchmarkUpcastersOnly(b *testing.B) {
	msg := v1Message(b)
	b.ReportAllocs()
	for b.Loop() {
		v2, err := ordertest.Up1to2(msg.Payload)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := ordertest.Up2to3(v2); err != nil {
			b.Fatal(err)
		}
	}
}
