package handlers_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/handlers"
	"github.com/busline/busline/internal/ordertest"
	"github.com/busline/busline/middleware"
	"github.com/busline/busline/schema"
)

// A v1 message reaches a v3 handler upcast, with its envelope in the context.
func TestEventUpcastsAndCarriesEnvelope(t *testing.T) {
	r := consumerRegistry(t)
	msg := v1Message(t, "o-1", 12.5)
	var got ordertest.V3
	var env schema.Envelope
	h := handlers.Event(r, func(ctx context.Context, o ordertest.V3) error {
		got = o
		env, _ = schema.EnvelopeFromContext(ctx)
		return nil
	})
	if err := h(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	if want := (ordertest.V3{OrderID: "o-1", AmountCents: 1250, Currency: "EUR"}); got != want {
		t.Fatalf("event %+v, want %+v", got, want)
	}
	if env.ID != msg.UUID || env.DataVersion != 1 || env.Source != "/legacy-orders" || env.Type != ordertest.Created {
		t.Fatalf("envelope %+v", env)
	}
}

// Events published with the handler's context inherit its correlation and
// name the handled event as their cause.
func TestPublishFromHandlerInheritsCorrelation(t *testing.T) {
	r := consumerRegistry(t)
	msg := v1Message(t, "o-1", 1)
	msg.Metadata[schema.KeyCorrelationID] = "corr-1"
	var pub recorder
	h := handlers.Event(r, func(ctx context.Context, o ordertest.V3) error {
		return handlers.Publish(ctx, &pub, r, "orders.v3", o, schema.WithSubject(o.OrderID))
	})
	if err := h(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	if len(pub.msgs) != 1 {
		t.Fatalf("published %d messages", len(pub.msgs))
	}
	out, _, err := schema.FromMessage(pub.msgs[0])
	if err != nil {
		t.Fatal(err)
	}
	if out.CorrelationID != "corr-1" || out.CausationID != msg.UUID || out.Subject != "o-1" ||
		out.DataVersion != 3 || out.Source != "/billing" {
		t.Fatalf("published envelope %+v", out)
	}
}

func TestPublishUnregisteredType(t *testing.T) {
	var pub recorder
	err := handlers.Publish(context.Background(), &pub, consumerRegistry(t), "t", struct{ X int }{})
	if !errors.Is(err, schema.ErrUnknownType) || len(pub.msgs) != 0 {
		t.Fatalf("err %v, %d published", err, len(pub.msgs))
	}
}

// Every undecodable message is rejected with the schema package's permanent
// error, the typed function is not called, and the payload is untouched.
func TestEventRejectsBadMessages(t *testing.T) {
	r := consumerRegistry(t)
	v4 := func() *message.Message {
		m := v1Message(t, "o-4", 1)
		m.Metadata[schema.KeyDataVersion] = "4"
		return m
	}
	cases := []struct {
		name string
		msg  *message.Message
		want error
	}{
		{"newer version", v4(), schema.ErrUnknownVersion},
		{"malformed version", func() *message.Message {
			m := v1Message(t, "o", 1)
			m.Metadata[schema.KeyDataVersion] = "0" // not a valid dataversion either
			return m
		}(), schema.ErrEnvelopeInvalid},
		{"missing version", func() *message.Message {
			m := v1Message(t, "o", 1)
			delete(m.Metadata, schema.KeyDataVersion)
			return m
		}(), schema.ErrVersionMissing},
		{"unknown type", func() *message.Message {
			m := v1Message(t, "o", 1)
			m.Metadata[schema.KeyType] = "com.example.order.cancelled"
			return m
		}(), schema.ErrUnknownType},
		{"invalid envelope", message.NewMessage("m", []byte(`{}`)), schema.ErrEnvelopeInvalid},
		{"undecodable payload", func() *message.Message {
			m := v1Message(t, "o", 1)
			m.Payload = []byte(`{"id":`)
			return m
		}(), schema.ErrUpcast},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			payload := bytes.Clone(c.msg.Payload)
			called := false
			h := handlers.Event(r, func(context.Context, ordertest.V3) error { called = true; return nil })
			err := h(context.Background(), c.msg)
			var se *schema.Error
			if !errors.Is(err, c.want) || !errors.As(err, &se) {
				t.Fatalf("err %v, want %v", err, c.want)
			}
			if !middleware.IsPermanent(err) || middleware.ErrorType(err) != se.Code {
				t.Errorf("err %v: permanent %v, error type %q", err, middleware.IsPermanent(err), middleware.ErrorType(err))
			}
			if called {
				t.Error("typed function called")
			}
			if !bytes.Equal(c.msg.Payload, payload) {
				t.Errorf("payload changed: %q", c.msg.Payload)
			}
		})
	}
}

// A current-version payload that the codec cannot read is decode_failed.
func TestEventDecodeFailed(t *testing.T) {
	r := consumerRegistry(t)
	m, err := r.NewMessage(context.Background(), ordertest.V3{OrderID: "o"})
	if err != nil {
		t.Fatal(err)
	}
	m.Payload = []byte(`not json`)
	h := handlers.Event(r, func(context.Context, ordertest.V3) error { return nil })
	if err := h(context.Background(), m); !errors.Is(err, schema.ErrDecode) {
		t.Fatalf("err %v, want decode_failed", err)
	}
}

// The typed function's errors come back as they are.
func TestEventPassesErrorsThrough(t *testing.T) {
	r := consumerRegistry(t)
	boom := errors.New("boom")
	h := handlers.Event(r, func(context.Context, ordertest.V3) error { return boom })
	if err := h(context.Background(), v1Message(t, "o", 1)); err != boom {
		t.Fatalf("err %v", err)
	}
	h = handlers.Event(r, func(context.Context, ordertest.V3) error { return bus.Permanent(boom) })
	if err := h(context.Background(), v1Message(t, "o", 1)); !errors.Is(err, boom) || !middleware.IsPermanent(err) {
		t.Fatalf("err %v", err)
	}
}

func TestEventPanicsOnProgrammingErrors(t *testing.T) {
	r := consumerRegistry(t)
	type unregistered struct{}
	for name, f := range map[string]func(){
		"unregistered type": func() { handlers.Event(r, func(context.Context, unregistered) error { return nil }) },
		"nil registry":      func() { handlers.Event(nil, func(context.Context, ordertest.V3) error { return nil }) },
		"nil function":      func() { handlers.Event[ordertest.V3](r, nil) },
		"batch unregistered": func() {
			handlers.Batch(r, handlers.BatchConfig{}, func(context.Context, []handlers.Item[unregistered]) error { return nil })
		},
		"batch negative size": func() {
			handlers.Batch(r, handlers.BatchConfig{Size: -1}, func(context.Context, []handlers.Item[ordertest.V3]) error { return nil })
		},
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				p := recover()
				if s, ok := p.(string); !ok || !strings.HasPrefix(s, "handlers: ") {
					t.Fatalf("panic %#v, want a handlers: message", p)
				}
			}()
			f()
		})
	}
}
