package schema_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/middleware"
	"github.com/busline/busline/schema"
)

func Example() {
	// Version 3 is what handlers see; v1 and v2 stay readable through
	// upcasters that work on raw JSON, so their Go types can be deleted.
	type OrderCreated struct {
		OrderID     string `json:"order_id"`
		AmountCents int64  `json:"amount_cents"`
		Currency    string `json:"currency"`
	}
	r := schema.NewRegistry(
		schema.WithSource("/orders-service"),
		schema.WithSchemaBase("https://schemas.acme.example/events"),
		schema.WithIDGenerator(func() string { return "0192b3a0-0000-7000-8000-000000000001" }),
		schema.WithClock(func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) }),
	)
	schema.Register[OrderCreated](r, "com.acme.order.created", 3)
	r.Upcast("com.acme.order.created", 1, 2, func(data []byte) ([]byte, error) {
		var v struct {
			ID     string  `json:"id"`
			Amount float64 `json:"amount"`
		}
		if err := json.Unmarshal(data, &v); err != nil {
			return nil, err
		}
		return json.Marshal(map[string]any{"id": v.ID, "amount_cents": int64(v.Amount * 100)})
	})
	r.Upcast("com.acme.order.created", 2, 3, func(data []byte) ([]byte, error) {
		var v struct {
			ID          string `json:"id"`
			AmountCents int64  `json:"amount_cents"`
		}
		if err := json.Unmarshal(data, &v); err != nil {
			return nil, err
		}
		return json.Marshal(OrderCreated{OrderID: v.ID, AmountCents: v.AmountCents, Currency: "EUR"})
	})
	if err := r.Check(); err != nil {
		panic(err)
	}

	// An old producer still publishes version 1.
	old := message.NewMessage("m-1", []byte(`{"id":"o-1","amount":12.5}`))
	schema.Envelope{Source: "/legacy", Type: "com.acme.order.created", DataVersion: 1}.Apply(old)

	order, env, err := schema.DecodeAs[OrderCreated](r, old)
	fmt.Printf("%+v from v%d, err=%v\n", order, env.DataVersion, err)

	// Publishing always stamps the current version.
	msg, _ := r.NewMessage(context.Background(), order, schema.WithSubject(order.OrderID))
	fmt.Println(msg.Metadata[schema.KeyType], msg.Metadata[schema.KeyDataVersion], msg.Metadata[schema.KeyDataSchema])

	// A version this consumer does not know yet is a permanent error.
	newer := message.NewMessage("m-2", []byte(`{}`))
	schema.Envelope{Source: "/orders-v4", Type: "com.acme.order.created", DataVersion: 4}.Apply(newer)
	_, _, err = schema.DecodeAs[OrderCreated](r, newer)
	var se *schema.Error
	fmt.Println(errors.As(err, &se), se.ErrorType(), middleware.IsPermanent(err), errors.Is(err, schema.ErrUnknownVersion))
	// Output:
	// {OrderID:o-1 AmountCents:1250 Currency:EUR} from v1, err=<nil>
	// com.acme.order.created 3 https://schemas.acme.example/events/com.acme.order.created/v3.json
	// true schema_version_unknown true true
}

func ExampleEnvelope() {
	env := schema.Envelope{
		ID:            "0192b3a0-0000-7000-8000-000000000001",
		Source:        "/orders-service",
		SpecVersion:   schema.SpecVersion,
		Type:          "com.acme.order.created",
		Time:          time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("CET", 3600)),
		Subject:       "o-1",
		DataVersion:   3,
		CorrelationID: "c-1",
	}
	if err := env.Validate(); err != nil {
		panic(err)
	}
	msg := message.NewMessage("", []byte(`{}`))
	env.Apply(msg)
	for _, k := range slices.Sorted(maps.Keys(msg.Metadata)) {
		fmt.Printf("%s: %s\n", k, msg.Metadata[k])
	}
	fmt.Println("uuid:", msg.UUID)

	env.Source = "not a uri"
	env.Extensions = map[string]string{"Tenant": "acme"}
	fmt.Println(env.Validate())
	// Output:
	// ce_correlationid: c-1
	// ce_dataversion: 3
	// ce_id: 0192b3a0-0000-7000-8000-000000000001
	// ce_source: /orders-service
	// ce_specversion: 1.0
	// ce_subject: o-1
	// ce_time: 2026-01-02T02:04:05Z
	// ce_type: com.acme.order.created
	// uuid: 0192b3a0-0000-7000-8000-000000000001
	// schema: envelope_invalid: type "com.acme.order.created" version 3: source "not a uri" is not a URI-reference
	// extension name "Tenant" is not lower-case letters and digits
}
