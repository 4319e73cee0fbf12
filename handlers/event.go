package handlers

import (
	"context"
	"fmt"
	"reflect"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/schema"
)

// Event returns a [bus.HandlerFunc] that decodes each message into T with
// r and calls fn with it.
//
// The message's data is upcast to the version T is registered for (see
// [schema.DecodeAs]), so a handler written for v3 also handles events that
// old producers still publish as v1 or v2. fn's context is the message's
// context plus the event's envelope, read with [schema.EnvelopeFromContext]:
// events published with it (see [Publish]) inherit the correlation id and get
// this event's id as causation id.
//
// A message that cannot be decoded (invalid envelope, unknown event type,
// missing, unknown or newer schema version, failed upcast, undecodable data)
// never reaches fn: the [*schema.Error] is returned as it is. It is
// permanent, so the bus does not retry it and moves the message, payload
// byte-identical, to the dead-letter topic with the error's code as reason
// (busline_dlq_reason). fn's own errors are returned as they are: transient
// unless marked with [bus.Permanent].
//
// Event panics when r or fn is nil or when T is not registered in r: those
// are programming errors, found at start-up rather than on the first message.
func Event[T any](r *schema.Registry, fn func(ctx context.Context, ev T) error) bus.HandlerFunc {
	mustRegistered[T](r, "Event")
	if fn == nil {
		panic("handlers: Event: nil handler function")
	}
	return func(ctx context.Context, msg *message.Message) error {
		ev, env, err := schema.DecodeAs[T](r, msg)
		if err != nil {
			return err
		}
		return fn(schema.ContextWithEnvelope(ctx, env), ev)
	}
}

// mustRegistered panics unless r is non-nil and T is registered in it.
func mustRegistered[T any](r *schema.Registry, fn string) {
	if r == nil {
		panic("handlers: " + fn + ": nil registry")
	}
	if _, _, ok := schema.TypeOf[T](r); !ok {
		panic(fmt.Sprintf("handlers: %s: Go type %v is not registered in the schema registry (schema.Register[%v])",
			fn, reflect.TypeFor[T](), reflect.TypeFor[T]()))
	}
}
