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

// RestoreCorrelation gives md the correlation id its event id implies: when
// md has an event id (ce_id) and no correlation id, the correlation id
// becomes the event id. A message that carries no correlation id starts a
// correlation of its own, named by its event id, which is what Busline's
// correlation middleware decides for it too (middleware.RootCorrelation);
// restoring it in the unmarshaler lets everything that reads metadata
// before the middleware (telemetry, logs, the dead-letter tool) see the
// same id. An empty correlation id counts as none.
func RestoreCorrelation(md message.Metadata) {
	if md[KeyCorrelationID] != "" {
		return
	}
	if id := md[KeyID]; id != "" {
		md[KeyCorrelationID] = id
	}
}
