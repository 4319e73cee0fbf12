package schema_test

import (
	"encoding/json"
	"math"

	"github.com/busline/busline/schema"
)

const orderCreated = "com.example.order.created"

// Three versions of one event: v1 had a float amount, v2 integer cents,
// v3 renamed id to order_id and added the currency.
type orderV1 struct {
	ID     string  `json:"id"`
	Amount float64 `json:"amount"`
}

type orderV2 struct {
	ID          string `json:"id"`
	AmountCents int64  `json:"amount_cents"`
}

type orderV3 struct {
	OrderID     string `json:"order_id"`
	AmountCents int64  `json:"amount_cents"`
	Currency    string `json:"currency"`
}

func upOrder1to2(data []byte) ([]byte, error) {
	var v orderV1
	if err := json.Unmarshal(data, &v); err != nil {
		return nil, err
	}
	return json.Marshal(orderV2{ID: v.ID, AmountCents: int64(math.Round(v.Amount * 100))})
}

func upOrder2to3(data []byte) ([]byte, error) {
	var v orderV2
	if err := json.Unmarshal(data, &v); err != nil {
		return nil, err
	}
	return json.Marshal(orderV3{OrderID: v.ID, AmountCents: v.AmountCents, Currency: "EUR"})
}

// newOrderRegistry registers v1 (for old producers), v3 (current) and the
// v1->v2->v3 chain. v2 needs no Go type.
func newOrderRegistry(opts ...schema.Option) *schema.Registry {
	r := schema.NewRegistry(append([]schema.Option{schema.WithSource("/orders")}, opts...)...)
	schema.Register[orderV1](r, orderCreated, 1)
	schema.Register[orderV3](r, orderCreated, 3)
	r.Upcast(orderCreated, 1, 2, upOrder1to2)
	r.Upcast(orderCreated, 2, 3, upOrder2to3)
	return r
}
