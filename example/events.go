package main

import (
	"encoding/json"
	"fmt"

	"github.com/busline/busline/schema"
)

// Event types: explicit, stable names on the wire, never Go type names.
const (
	typeOrderPlaced     = "com.example.order.placed"
	typePaymentCaptured = "com.example.payment.captured"
	typeOrderShipped    = "com.example.order.shipped"
	typeEmailRequested  = "com.example.email.requested"
	typeStockReserved   = "com.example.stock.reservation.requested"
	typeReportRequested = "com.example.report.requested"
	exampleSource       = "/busline-example/checkout"
	legacyExampleSource = "/busline-example/legacy-checkout"
)

// OrderPlaced is version 2, the current version, of com.example.order.placed.
type OrderPlaced struct {
	OrderID     string `json:"order_id"`
	AmountCents int64  `json:"amount_cents"`
	Currency    string `json:"currency"`
}

// OrderPlacedV1 is what the legacy checkout still publishes: version 1, the
// total a float in euros.
type OrderPlacedV1 struct {
	ID    string  `json:"id"`
	Total float64 `json:"total"`
}

// PaymentCaptured is published by billing for an order it charged.
type PaymentCaptured struct {
	OrderID     string `json:"order_id"`
	AmountCents int64  `json:"amount_cents"`
}

// OrderShipped is published by shipping once a carrier booked the parcel.
type OrderShipped struct {
	OrderID string `json:"order_id"`
	Carrier string `json:"carrier"`
}

// EmailRequested asks the mailer to send an email (throttled).
type EmailRequested struct {
	To      string `json:"to"`
	Subject string `json:"subject"`
}

// StockReservation asks the warehouse to reserve stock (circuit breaker).
type StockReservation struct {
	OrderID string `json:"order_id"`
	SKU     string `json:"sku"`
}

// ReportRequested asks for a slow report (graceful shutdown).
type ReportRequested struct {
	Name string `json:"name"`
}

// newRegistry is the service's schema registry: OrderPlaced is at version 2
// and version 1 stays readable through an upcaster.
func newRegistry() (*schema.Registry, error) {
	reg := schema.NewRegistry(schema.WithSource(exampleSource))
	schema.Register[OrderPlaced](reg, typeOrderPlaced, 2)
	reg.Upcast(typeOrderPlaced, 1, 2, upcastOrderPlacedV1)
	schema.Register[PaymentCaptured](reg, typePaymentCaptured, 1)
	schema.Register[OrderShipped](reg, typeOrderShipped, 1)
	schema.Register[EmailRequested](reg, typeEmailRequested, 1)
	schema.Register[StockReservation](reg, typeStockReserved, 1)
	schema.Register[ReportRequested](reg, typeReportRequested, 1)
	if err := reg.Check(); err != nil {
		return nil, err
	}
	return reg, nil
}

// newLegacyRegistry is the registry of the legacy checkout, which still
// publishes OrderPlaced version 1.
func newLegacyRegistry() *schema.Registry {
	reg := schema.NewRegistry(schema.WithSource(legacyExampleSource))
	schema.Register[OrderPlacedV1](reg, typeOrderPlaced, 1)
	return reg
}

// upcastOrderPlacedV1 turns v1 data into v2: id -> order_id, total in
// euros -> amount_cents, currency EUR (v1 only knew euros).
func upcastOrderPlacedV1(data []byte) ([]byte, error) {
	var v1 OrderPlacedV1
	if err := json.Unmarshal(data, &v1); err != nil {
		return nil, fmt.Errorf("order placed v1: %w", err)
	}
	return json.Marshal(OrderPlaced{
		OrderID:     v1.ID,
		AmountCents: int64(v1.Total*100 + 0.5),
		Currency:    "EUR",
	})
}
