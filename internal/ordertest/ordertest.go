// Package ordertest holds the event the project's tests evolve through
// three schema versions, written once for the tests of schema, handlers and
// bus: an order created, its versions and the upcasters between them.
package ordertest

import (
	"encoding/json"
	"math"
)

// Created is the event type of the order's events.
const Created = "com.example.order.created"

// V1 is the first version: a float amount.
type V1 struct {
	ID     string  `json:"id"`
	Amount float64 `json:"amount"`
}

// V2 has integer cents instead.
type V2 struct {
	ID          string `json:"id"`
	AmountCents int64  `json:"amount_cents"`
}

// V3 renamed id to order_id and added the currency.
type V3 struct {
	OrderID     string `json:"order_id"`
	AmountCents int64  `json:"amount_cents"`
	Currency    string `json:"currency"`
}

// Up1to2 upcasts a V1 payload to V2, rounding the amount to cents.
func Up1to2(data []byte) ([]byte, error) {
	var v V1
	if err := json.Unmarshal(data, &v); err != nil {
		return nil, err
	}
	return json.Marshal(V2{ID: v.ID, AmountCents: int64(math.Round(v.Amount * 100))})
}

// Up2to3 upcasts a V2 payload to V3, in euros.
func Up2to3(data []byte) ([]byte, error) {
	var v V2
	if err := json.Unmarshal(data, &v); err != nil {
		return nil, err
	}
	return json.Marshal(V3{OrderID: v.ID, AmountCents: v.AmountCents, Currency: "EUR"})
}
