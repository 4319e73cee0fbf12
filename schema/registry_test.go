package schema_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/internal/ordertest"
	"github.com/busline/busline/schema"
)

// v1Message builds what an old producer, still on version 1, publishes.
func v1Message(t testing.TB) *message.Message {
	t.Helper()
	old := schema.NewRegistry(schema.WithSource("/legacy-orders"))
	schema.Register[ordertest.V1](old, ordertest.Created, 1)
	msg, err := old.NewMessage(context.Background(), ordertest.V1{ID: "o-1", Amount: 12.5})
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

func TestRegistryCheckOK(t *testing.T) {
	if err := newOrderRegistry().Check(); err != nil {
		t.Fatal(err)
	}
}

type legacyV1 ordertest.V1

type (
	a1 struct{ A int }
	a2 struct{ A int }
	a3 struct{ A int }
	b1 struct{ B int }
)

func TestRegistryCheckListsEveryProblem(t *testing.T) {
	r := schema.NewRegistry(schema.WithSchemaBase("not a uri"), schema.WithSource("has space"))
	// gap: v1 and v3 without upcasters
	schema.Register[a1](r, "com.example.a", 1)
	schema.Register[a3](r, "com.example.a", 3)
	// duplicate version, and a Go type bound twice
	schema.Register[a2](r, "com.example.a", 3)
	schema.Register[a1](r, "com.example.b", 1)
	// upcaster skipping a version, duplicate upcaster, nil upcaster
	r.Upcast("com.example.b", 1, 3, ordertest.Up1to2)
	r.Upcast("com.example.c", 1, 2, ordertest.Up1to2)
	r.Upcast("com.example.c", 1, 2, ordertest.Up1to2)
	r.Upcast("com.example.d", 1, 2, nil)
	// upcaster past the current version (missing current version's Go type)
	schema.Register[b1](r, "com.example.e", 1)
	r.Upcast("com.example.e", 1, 2, ordertest.Up1to2)
	// invalid names and versions
	schema.Register[struct{ X int }](r, "", 1)
	schema.Register[struct{ Y int }](r, "com.example.f", 0)
	r.Upcast("com example", 1, 2, ordertest.Up1to2)
	// conflicting options
	schema.Register[struct{ Z int }](r, "com.example.g", 1, schema.AssumeVersion(1))
	schema.Register[struct{ W int }](r, "com.example.g", 2, schema.AssumeVersion(2))

	err := r.Check()
	if err == nil {
		t.Fatal("Check() = nil")
	}
	want := []string{
		`type "com.example.a": gap: missing upcaster v1->v2`,
		`type "com.example.a": gap: missing upcaster v2->v3`,
		`type "com.example.a": version 3 registered twice`,
		`Go type schema_test.a1 bound 2 times (com.example.a v1, com.example.b v1)`,
		`type "com.example.b": upcaster v1->v3: must go from a version >= 1 to the next one`,
		`type "com.example.c": upcaster v1->v2 registered twice`,
		`type "com.example.c": upcasters but no Go type registered: no current version`,
		`type "com.example.d": upcaster v1->v2: nil function`,
		`type "com.example.e": upcaster v1->v2 leads past the current version 1: register the Go type of version 2`,
		`type "": invalid event type name`,
		`type "com.example.f": Go type struct { Y int }: version 0`,
		`type "com example": upcaster: invalid event type name`,
		`type "com.example.g": conflicting assumed versions 1 and 2`,
		`schema base "not a uri" is not an absolute URI`,
		`source "has space" is not a URI-reference`,
	}
	msg := err.Error()
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("Check() lacks %q", w)
		}
	}
	if n := len(strings.Split(msg, "\n")); n != len(want)+1 { // + the gap of com.example.g
		t.Errorf("Check() listed %d problems, want %d:\n%s", n, len(want)+1, msg)
	}
	// Stable order.
	if again := r.Check().Error(); again != msg {
		t.Error("Check() output not stable")
	}
}

func TestDecodeUpcastsV1ToV3(t *testing.T) {
	r := newOrderRegistry()
	msg := v1Message(t)
	payload := bytes.Clone(msg.Payload)

	v, env, err := r.Decode(msg)
	if err != nil {
		t.Fatal(err)
	}
	want := ordertest.V3{OrderID: "o-1", AmountCents: 1250, Currency: "EUR"}
	if v != want {
		t.Errorf("Decode = %#v, want %#v", v, want)
	}
	if env.DataVersion != 1 || env.Source != "/legacy-orders" || env.Type != ordertest.Created {
		t.Errorf("envelope = %+v (must be as received)", env)
	}

	typed, _, err := schema.DecodeAs[ordertest.V3](r, msg)
	if err != nil || typed != want {
		t.Errorf("DecodeAs = %#v, %v", typed, err)
	}
	// A consumer still on v1 reads v1 as it is.
	old, _, err := schema.DecodeAs[ordertest.V1](r, msg)
	if err != nil || old != (ordertest.V1{ID: "o-1", Amount: 12.5}) {
		t.Errorf("DecodeAs[ordertest.V1] = %#v, %v", old, err)
	}
	if !bytes.Equal(msg.Payload, payload) {
		t.Errorf("payload modified: %s", msg.Payload)
	}
}

func TestDecodeV2WithoutGoType(t *testing.T) {
	r := newOrderRegistry()
	msg := message.NewMessage("m-2", []byte(`{"id":"o-2","amount_cents":99}`))
	schema.Envelope{Source: "/p", Type: ordertest.Created, DataVersion: 2}.Apply(msg)
	v, _, err := schema.DecodeAs[ordertest.V3](r, msg)
	if err != nil || v != (ordertest.V3{OrderID: "o-2", AmountCents: 99, Currency: "EUR"}) {
		t.Errorf("DecodeAs = %#v, %v", v, err)
	}
}

func TestDecodeErrors(t *testing.T) {
	r := newOrderRegistry()
	failing := schema.NewRegistry()
	schema.Register[ordertest.V3](failing, ordertest.Created, 3)
	failing.Upcast(ordertest.Created, 2, 3, func([]byte) ([]byte, error) { return nil, errors.New("boom") })

	build := func(payload string, env schema.Envelope) *message.Message {
		msg := message.NewMessage("m-1", []byte(payload))
		if env.Source == "" {
			env.Source = "/p"
		}
		env.Apply(msg)
		return msg
	}
	tests := []struct {
		name string
		r    *schema.Registry
		msg  *message.Message
		code string
		want string
	}{
		{"newer version", r, build(`{"order_id":"o"}`, schema.Envelope{Type: ordertest.Created, DataVersion: 4}),
			schema.CodeVersionUnknown, "newer than version 3"},
		{"unknown type", r, build(`{}`, schema.Envelope{Type: "com.example.unknown", DataVersion: 1}),
			schema.CodeEventTypeUnknown, `"com.example.unknown"`},
		{"missing version", r, build(`{}`, schema.Envelope{Type: ordertest.Created}),
			schema.CodeVersionMissing, "no dataversion"},
		{"undecodable", r, build(`{"order_id":42}`, schema.Envelope{Type: ordertest.Created, DataVersion: 3}),
			schema.CodeDecodeFailed, "cannot unmarshal"},
		{"not json", r, build(`<xml/>`, schema.Envelope{Type: ordertest.Created, DataVersion: 3}),
			schema.CodeDecodeFailed, "invalid character"},
		{"wrong content type", r, build(`{}`, schema.Envelope{Type: ordertest.Created, DataVersion: 3, DataContentType: "application/protobuf"}),
			schema.CodeDecodeFailed, `content type "application/protobuf"`},
		{"upcaster fails on bad v1", r, build(`{"amount":"x"}`, schema.Envelope{Type: ordertest.Created, DataVersion: 1}),
			schema.CodeUpcastFailed, "v1->v2"},
		{"upcaster error", failing, build(`{}`, schema.Envelope{Type: ordertest.Created, DataVersion: 2}),
			schema.CodeUpcastFailed, "boom"},
		{"no upcaster from version", failing, build(`{}`, schema.Envelope{Type: ordertest.Created, DataVersion: 1}),
			schema.CodeVersionUnknown, "no upcaster"},
		{"bad envelope", r, build(`{}`, schema.Envelope{Type: ordertest.Created, DataVersion: 3, SpecVersion: "0.3"}),
			schema.CodeEnvelopeInvalid, "specversion"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			payload := bytes.Clone(tt.msg.Payload)
			md := fmt.Sprint(tt.msg.Metadata)
			_, _, err := tt.r.Decode(tt.msg)
			if err == nil {
				t.Fatal("no error")
			}
			assertCode(t, err, tt.code)
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q lacks %q", err, tt.want)
			}
			if _, _, err2 := schema.DecodeAs[ordertest.V3](tt.r, tt.msg); err2 == nil || err2.(*schema.Error).Code != tt.code {
				t.Errorf("DecodeAs error = %v, want code %s", err2, tt.code)
			}
			if !bytes.Equal(tt.msg.Payload, payload) || fmt.Sprint(tt.msg.Metadata) != md {
				t.Error("message modified by a failed decode")
			}
		})
	}
}

func TestDecodeV4ToV3RegistryIsPermanent(t *testing.T) {
	producer := schema.NewRegistry(schema.WithSource("/orders"))
	type orderV4 struct {
		OrderID string `json:"order_id"`
	}
	schema.Register[orderV4](producer, ordertest.Created, 4)
	msg, err := producer.NewMessage(context.Background(), orderV4{OrderID: "o-9"})
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Clone(msg.Payload)
	_, _, err = newOrderRegistry().Decode(msg)
	assertCode(t, err, schema.CodeVersionUnknown)
	if !errors.Is(err, schema.ErrUnknownVersion) {
		t.Error("not ErrUnknownVersion")
	}
	var se *schema.Error
	errors.As(err, &se)
	if se.Type != ordertest.Created || se.Version != 4 {
		t.Errorf("error fields: %+v", se)
	}
	if !bytes.Equal(msg.Payload, payload) {
		t.Error("payload modified")
	}
}

func TestDecodeVersionFromDataSchemaOrAssumed(t *testing.T) {
	r := newOrderRegistry(schema.WithSchemaBase("https://schemas.example/events/"))
	schema.Register[legacyV1](r, "com.example.legacy", 1, schema.AssumeVersion(1))

	msg := message.NewMessage("m", []byte(`{"id":"o","amount":1}`))
	schema.Envelope{Source: "/p", Type: ordertest.Created,
		DataSchema: "https://schemas.example/events/com.example.order.created/v1.json"}.Apply(msg)
	if v, _, err := schema.DecodeAs[ordertest.V3](r, msg); err != nil || v.AmountCents != 100 {
		t.Errorf("from dataschema: %v, %v", v, err)
	}

	msg = message.NewMessage("m", []byte(`{"id":"o","amount":1}`))
	schema.Envelope{Source: "/p", Type: "com.example.legacy"}.Apply(msg)
	if v, _, err := r.Decode(msg); err != nil || v != (legacyV1{ID: "o", Amount: 1}) {
		t.Errorf("assumed version: %v, %v", v, err)
	}
	if err := r.Check(); err != nil {
		t.Error(err)
	}
}

func TestDecodeAsWrongType(t *testing.T) {
	r := newOrderRegistry()
	type other struct{}
	schema.Register[other](r, "com.example.other", 1)
	msg := v1Message(t)
	_, _, err := schema.DecodeAs[other](r, msg)
	assertCode(t, err, schema.CodeEventTypeUnknown)
	_, _, err = schema.DecodeAs[struct{ Unregistered int }](r, msg)
	assertCode(t, err, schema.CodeEventTypeUnknown)
	// A v3 event for a consumer whose Go type is v1: newer.
	v3, err := r.NewMessage(context.Background(), ordertest.V3{OrderID: "o"})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = schema.DecodeAs[ordertest.V1](r, v3)
	assertCode(t, err, schema.CodeVersionUnknown)
}

func TestEncode(t *testing.T) {
	now := time.Date(2026, 5, 6, 7, 8, 9, 0, time.FixedZone("CEST", 2*3600))
	r := newOrderRegistry(
		schema.WithSchemaBase("https://schemas.example/events"),
		schema.WithClock(func() time.Time { return now }),
		schema.WithIDGenerator(func() string { return "id-1" }),
	)
	parent := schema.Envelope{ID: "parent-1", CorrelationID: "corr-0"}
	ctx := schema.ContextWithEnvelope(context.Background(), parent)
	msg, err := r.NewMessage(ctx, &ordertest.V3{OrderID: "o-1", AmountCents: 5, Currency: "EUR"},
		schema.WithSubject("o-1"), schema.WithPartitionKey("c-1"), schema.WithExtension("tenant", "acme"))
	if err != nil {
		t.Fatal(err)
	}
	want := message.Metadata{
		"ce_id":            "id-1",
		"ce_source":        "/orders",
		"ce_specversion":   "1.0",
		"ce_type":          ordertest.Created,
		"ce_time":          "2026-05-06T05:08:09Z",
		"ce_subject":       "o-1",
		"content-type":     "application/json",
		"ce_dataschema":    "https://schemas.example/events/com.example.order.created/v3.json",
		"ce_dataversion":   "3",
		"ce_correlationid": "corr-0",
		"ce_causationid":   "parent-1",
		"ce_partitionkey":  "c-1",
		"ce_tenant":        "acme",
	}
	if fmt.Sprint(msg.Metadata) != fmt.Sprint(want) {
		t.Errorf("metadata = %v\nwant %v", msg.Metadata, want)
	}
	if msg.UUID != "id-1" || string(msg.Payload) != `{"order_id":"o-1","amount_cents":5,"currency":"EUR"}` {
		t.Errorf("message %s %s", msg.UUID, msg.Payload)
	}
	if msg.Context() != ctx {
		t.Error("message context not set")
	}

	// Without a correlation id upstream, the parent's id starts the flow.
	ctx = schema.ContextWithEnvelope(context.Background(), schema.Envelope{ID: "root"})
	env, _, err := r.Encode(ctx, ordertest.V3{}, schema.WithCausationID("explicit"))
	if err != nil || env.CorrelationID != "root" || env.CausationID != "explicit" {
		t.Errorf("env = %+v, %v", env, err)
	}

	_, _, err = r.Encode(context.Background(), struct{ Nope int }{})
	assertCode(t, err, schema.CodeEventTypeUnknown)
	_, _, err = r.Encode(context.Background(), ordertest.V3{}, schema.WithExtension("Bad", "x"))
	assertCode(t, err, schema.CodeEnvelopeInvalid)
	_, _, err = r.Encode(context.Background(), (*ordertest.V3)(nil))
	assertCode(t, err, schema.CodeEventTypeUnknown)
}

func TestEncodeDefaultIDIsUUID(t *testing.T) {
	r := newOrderRegistry()
	a, _, err := r.Encode(context.Background(), ordertest.V3{})
	if err != nil {
		t.Fatal(err)
	}
	b, _, _ := r.Encode(context.Background(), ordertest.V3{})
	if len(a.ID) != 36 || a.ID == b.ID || a.ID[14] != '7' {
		t.Errorf("ids %q %q: want distinct UUIDv7", a.ID, b.ID)
	}
	if a.Time.Location() != time.UTC || time.Since(a.Time) > time.Minute {
		t.Errorf("time %v", a.Time)
	}
}

type pipeCodec struct{}

func (pipeCodec) ContentType() string { return "text/x-pipe" }
func (pipeCodec) Marshal(v any) ([]byte, error) {
	o := v.(ordertest.V3)
	return fmt.Appendf(nil, "%s|%d|%s", o.OrderID, o.AmountCents, o.Currency), nil
}
func (pipeCodec) Unmarshal(data []byte, v any) error {
	o := v.(*ordertest.V3)
	_, err := fmt.Sscanf(strings.ReplaceAll(string(data), "|", " "), "%s %d %s", &o.OrderID, &o.AmountCents, &o.Currency)
	return err
}

func TestCustomCodec(t *testing.T) {
	r := schema.NewRegistry(schema.WithSource("/p"))
	schema.Register[ordertest.V3](r, ordertest.Created, 3, schema.WithTypeCodec(pipeCodec{}))
	if err := r.Check(); err != nil {
		t.Fatal(err)
	}
	msg, err := r.NewMessage(context.Background(), ordertest.V3{OrderID: "o", AmountCents: 3, Currency: "USD"})
	if err != nil {
		t.Fatal(err)
	}
	if string(msg.Payload) != "o|3|USD" || msg.Metadata[schema.KeyDataContentType] != "text/x-pipe" {
		t.Errorf("message %s %v", msg.Payload, msg.Metadata)
	}
	v, _, err := schema.DecodeAs[ordertest.V3](r, msg)
	if err != nil || v != (ordertest.V3{OrderID: "o", AmountCents: 3, Currency: "USD"}) {
		t.Errorf("decoded %v, %v", v, err)
	}
	if info := r.Types(); len(info) != 1 || info[0].ContentType != "text/x-pipe" {
		t.Errorf("Types() = %+v", info)
	}
}

func TestTypesAndTypeOf(t *testing.T) {
	r := newOrderRegistry(schema.WithSchemaBase("https://s.example"))
	info := r.Types()
	if len(info) != 1 || info[0].Current != 3 || fmt.Sprint(info[0].Versions) != "[1 3]" ||
		fmt.Sprint(info[0].Readable) != "[1 2 3]" || info[0].DataSchema != "https://s.example/com.example.order.created/v3.json" {
		t.Errorf("Types() = %+v", info)
	}
	if typ, v, ok := schema.TypeOf[ordertest.V3](r); !ok || typ != ordertest.Created || v != 3 {
		t.Errorf("TypeOf = %q %d %v", typ, v, ok)
	}
	if _, _, ok := schema.TypeOf[string](r); ok {
		t.Error("TypeOf[string] ok")
	}
}

type (
	late0 struct{}
	late1 struct{}
	late2 struct{}
	late3 struct{}
)

var lateRegister = []func(*schema.Registry){
	func(r *schema.Registry) { schema.Register[late0](r, "com.example.late0", 1) },
	func(r *schema.Registry) { schema.Register[late1](r, "com.example.late1", 1) },
	func(r *schema.Registry) { schema.Register[late2](r, "com.example.late2", 1) },
	func(r *schema.Registry) { schema.Register[late3](r, "com.example.late3", 1) },
}

func TestRegistryConcurrentUse(t *testing.T) {
	r := newOrderRegistry()
	msg := v1Message(t)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 200 {
				if _, _, err := schema.DecodeAs[ordertest.V3](r, msg); err != nil {
					t.Error(err)
					return
				}
				if _, err := r.NewMessage(context.Background(), ordertest.V3{OrderID: "x"}); err != nil {
					t.Error(err)
					return
				}
				if i == 0 && j%50 == 0 {
					// Late registration invalidates the snapshot; readers rebuild it.
					lateRegister[j/50](r)
				}
			}
		})
	}
	wg.Wait()
	if err := r.Check(); err != nil {
		t.Fatal(err)
	}
}
