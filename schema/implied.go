package schema

import "github.com/ThreeDotsLabs/watermill/message"

// CorrelationImplied reports whether the correlation id in md goes without
// saying: md has an event id (ce_id) and its correlation id equals it, as on
// every message that starts a correlation (every message published outside
// a handler). Busline's Kafka and RabbitMQ marshalers leave such a
// correlation id off the wire, one header less on nearly every message, and
// their unmarshalers put it back with [RestoreCorrelation].
func CorrelationImplied(md message.Metadata) bool {
	id := md[KeyID]
	return id != "" && md[KeyCorrelationID] == id
}

// CorrelationID returns the correlation id md carries: its
// ce_correlationid, else Watermill's correlation_id
// ([KeyWatermillCorrelationID]), so that a message from a Watermill service
// that used middleware.SetCorrelationID keeps its correlation; else "".
// ce_correlationid wins when both are present: it is the CloudEvents
// attribute, which Busline writes and other CloudEvents tools read.
func CorrelationID(md message.Metadata) string {
	if c := md[KeyCorrelationID]; c != "" {
		return c
	}
	return md[KeyWatermillCorrelationID]
}

// RestoreCorrelation gives md the correlation id it carries or its event
// id implies: when md has no ce_correlationid, it becomes Watermill's
// correlation_id when md has one ([CorrelationID]), else the event id
// (ce_id). A message that carries no correlation id starts a
// correlation of its own, named by its event id, which is what Busline's
// correlation middleware decides for it too (middleware.RootCorrelation);
// restoring it in the unmarshaler lets everything that reads metadata
// before the middleware (telemetry, logs, the dead-letter tool) see the
// same id. An empty correlation id counts as none.
func RestoreCorrelation(md message.Metadata) {
	if md[KeyCorrelationID] != "" {
		return
	}
	if c := md[KeyWatermillCorrelationID]; c != "" {
		md[KeyCorrelationID] = c
		return
	}
	if id := md[KeyID]; id != "" {
		md[KeyCorrelationID] = id
	}
}
