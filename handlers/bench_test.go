package handlers_test

import (
	"context"
	"testing"

	"github.com/busline/busline/handlers"
	"github.com/busline/busline/internal/ordertest"
)

// BenchmarkEventDecodeUpcast is the per-message cost of the typed adapter
// for an old event: read the envelope, upcast v1 -> v2 -> v3, decode into
// the v3 Go type, put the envelope into the context, call the function.
// Compare with schema's BenchmarkDecodeUpcast, the same without the adapter.
func BenchmarkEventDecodeUpcast(b *testing.B) {
	r := consumerRegistry(b)
	msg := v1Message(b, "o-1", 12.5)
	h := handlers.Event(r, func(context.Context, ordertest.V3) error { return nil })
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := h(ctx, msg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEventDecodeCurrent is the adapter on an event already at the
// current version: no upcasting.
func BenchmarkEventDecodeCurrent(b *testing.B) {
	r := consumerRegistry(b)
	msg, err := r.NewMessage(context.Background(), ordertest.V3{OrderID: "o-1", AmountCents: 1250, Currency: "EUR"})
	if err != nil {
		b.Fatal(err)
	}
	h := handlers.Event(r, func(context.Context, ordertest.V3) error { return nil })
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := h(ctx, msg); err != nil {
			b.Fatal(err)
		}
	}
}
