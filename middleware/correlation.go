package middleware

import (
	"context"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/schema"
)

// Correlation returns a middleware that carries the correlation and causation
// ids through a handler:
//
//   - the handled message keeps its ce_correlationid, or else Watermill's
//     correlation_id (schema.CorrelationID: ce_correlationid wins when both
//     are present); when it has neither, the message starts a new correlation whose id is its own event id, or its
//     UUID when it has no event id ([RootCorrelation]). The
//     message itself is not changed (a message without a correlation id is
//     the root of its own, as on the wire: schema.CorrelationImplied); the
//     copy [DeadLetter] publishes gets the id written in;
//   - the handler's context carries the correlation id and the handled
//     message's UUID, read with [CorrelationIDFromContext] and
//     [CausationIDFromContext], and used by [Propagate];
//   - the messages the handler returns get ce_correlationid and
//     ce_causationid (the handled message's UUID) when they have none.
//
// Messages a handler publishes through a publisher of its own are covered by
// [Propagate], which the bus calls on every publish.
func Correlation() message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			hc := &handledCtx{Context: msg.Context(), correlationID: correlationOf(msg), messageID: msg.UUID}
			msg.SetContext(hc)
			out, err := h(msg)
			msg.SetContext(hc.Context)
			for _, m := range out {
				stamp(m, hc.correlationID, hc.messageID)
			}
			return out, err
		}
	}
}

// correlationOf returns msg's correlation id (schema.MessageCorrelation).
// The message is not changed: a message without a correlation id is the
// root of its own (see schema.CorrelationImplied); the dead-letter step
// writes the id into the copy it publishes.
func correlationOf(msg *message.Message) string {
	return schema.MessageCorrelation(msg.Metadata, msg.UUID)
}

// RootCorrelation is the correlation id of a message that carries none and
// so starts a correlation of its own: its event id (ce_id), or its UUID
// when it has no event id (schema.Correlation).
func RootCorrelation(msg *message.Message) string {
	return schema.Correlation("", msg.Metadata[schema.KeyID], msg.UUID)
}

// Propagate stamps the envelope on messages about to be published under
// ctx: a UUID (watermill.NewUUID) and a CloudEvents id (its UUID) when it
// has none, a fresh retry budget (no busline_retry_* keys: a forwarded copy
// of a message does not inherit its delayed rounds), and the correlation,
// by schema.Inherit: a message keeps the
// ids it carries (also
// Watermill's correlation_id); else it gets the correlation id from ctx
// (see [CorrelationIDFromContext]) or, when ctx has none, its own UUID: it
// is the edge where a new correlation starts. A message that has no
// ce_causationid gets the id of the message being handled in ctx, if any.
// Apart from new ids, Propagate does not allocate when the metadata maps
// exist; nil messages are skipped.
func Propagate(ctx context.Context, msgs ...*message.Message) {
	var corr, cause string
	if h := handledFromContext(ctx); h != nil {
		corr, cause = h.correlationID, h.messageID
	}
	for _, m := range msgs {
		if m != nil {
			stamp(m, corr, cause)
		}
	}
}

// stamp gives m the correlation of a message published while handling the
// message with correlation id corr and id cause (schema.Inherit).
func stamp(m *message.Message, corr, cause string) {
	if m.UUID == "" {
		m.UUID = watermill.NewUUID()
	}
	if m.Metadata == nil {
		m.Metadata = make(message.Metadata, 4)
	}
	if m.Metadata[schema.KeyID] == "" {
		m.Metadata[schema.KeyID] = m.UUID
	}
	// A published message starts a retry budget of its own, also when it
	// is a copy of a message that went through delayed rounds.
	if _, ok := m.Metadata[KeyRetryRounds]; ok { // the tier writes the four keys together
		for _, k := range retryKeys {
			delete(m.Metadata, k)
		}
	}
	schema.Inherit(m.Metadata, corr, cause, m.UUID)
}
