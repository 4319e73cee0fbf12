// Package handlers adapts typed, context-first Go functions to Busline
// handlers: generic adapters that decode and upcast versioned events through
// the schema registry, typed publishing, and batch handlers.
//
// # Overview
//
// A handler is written for the current version of one event type:
//
//	h := handlers.Event(reg, func(ctx context.Context, o OrderCreated) error {
//		env, _ := schema.EnvelopeFromContext(ctx) // id, subject, correlation...
//		return handlers.Publish(ctx, b, reg, "invoices", InvoiceDue{OrderID: o.OrderID},
//			schema.WithSubject(env.Subject))
//	})
//	err := b.Handle("invoicing", "orders", h)
//
// [Event] returns a [bus.HandlerFunc]: it decodes each message with the
// [schema.Registry] into the Go type the function takes, upcasting events
// that old producers still publish in an older schema version, and calls
// the function with the message's context extended by the event's envelope
// ([schema.EnvelopeFromContext]). [Publish] is the other direction: it
// encodes a value of a registered Go type into a message with a complete
// CloudEvents envelope and publishes it on the bus. Published with the
// handler's context, the new event inherits the correlation id of the
// handled one, whose id becomes its causation id.
//
// Adapters check at construction that their Go type is registered and panic
// with a "handlers: ..." message when it is not: a missing registration is a
// programming error, better found at start-up than on the first message.
//
// # Errors
//
// A message the registry cannot decode never reaches the typed function:
// an invalid envelope, an unknown event type (for instance another type
// published to the same topic), a missing, unknown or newer schema version,
// a failing upcaster or undecodable data. The adapters return the
// [*schema.Error] as it is. It is permanent and carries a machine-readable
// code, so the bus neither retries it nor blocks on it: its dead-letter step
// moves the message, payload byte-identical, to the dead-letter topic with
// the code as busline_dlq_reason (for a v4 event sent to a v3 consumer:
// "schema_version_unknown").
//
// Errors of the typed function are returned as they are: transient ones are
// retried by the bus, those wrapped with [bus.Permanent] are dead-lettered at
// once.
//
// # Batches
//
// [Batch] makes a [Batcher] that hands decoded events to one function call
// per batch of at most BatchConfig.Size events, for work that is cheaper in
// bulk (one database round trip for many events). Each message is
// acknowledged for itself, only after the batch that held it succeeded; a
// failing batch fails every message in it; a message that cannot be decoded
// fails alone.
//
// Where its batches come from depends on the delivery:
//
//   - Kafka with bus.WithBatchDelivery(b.Size()): the broker hands up to
//     Size records of a partition that one poll returned to the handler as
//     one carrier message, and [Batcher.Handle] gets them as one batch, at
//     once (see its documentation for a failing batch).
//   - Without batch delivery, Watermill hands a handler one message at a
//     time, and the in-process broker and RabbitMQ deliver the next message
//     of a subscription only after the previous one was acknowledged: a
//     Batcher registered with [bus.Bus.Handle] is correct there but sees
//     batches of one message that waited MaxWait. It batches fully where
//     many messages are in flight: [Batcher.Handle] called by many
//     goroutines at once (a batch closes at Size events or MaxWait after it
//     opened), or [Batcher.Process] with a slice of messages the caller
//     fetched together.
//
// # Delivery semantics
//
// The adapters add no buffering and no goroutines: a message is acked only
// when the typed function (its batch, for a Batcher) returned nil, so the
// bus's at-least-once contract carries through. A function can see an event
// again after a failure or a crash; make it idempotent, keyed by the event id
// (the envelope's ID).
//
// # Concurrency
//
// The handlers returned by [Event] and the [Batcher] methods are safe for
// concurrent use; the typed functions they call must be too when the bus
// runs handlers concurrently.
package handlers
