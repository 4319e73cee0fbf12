package handlers

import (
	"context"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/schema"
)

// Publisher publishes messages to a topic; [*bus.Bus] is one. It returns when
// the broker accepted every message.
type Publisher interface {
	Publish(ctx context.Context, topic string, msgs ...*message.Message) error
}

// Publish publishes v, a value (or pointer to a value) of a Go type
// registered in r, to topic through p: it builds the message with
// [schema.Registry.NewMessage] (envelope with a new id, the registered type
// and current version, time, source; opts applied last) and publishes it
// with [Publisher.Publish].
//
// Called with the context of a handler made by [Event], the event inherits
// the handled event's correlation id, and the handled event's id becomes its
// causation id.
//
// Errors from the registry are [*schema.Error] (for instance
// [schema.ErrUnknownType] for a Go type that is not registered); publish
// errors are returned as p returned them.
func Publish(ctx context.Context, p Publisher, r *schema.Registry, topic string, v any, opts ...schema.MessageOption) error {
	msg, err := r.NewMessage(ctx, v, opts...)
	if err != nil {
		return err
	}
	return p.Publish(ctx, topic, msg)
}
