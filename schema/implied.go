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

// Correlation is the rule of correlation, in one place: the correlation
// id of an event is the one it carries, else the one it inherits from the
// event being handled when it was made, else its own id (it starts a
// correlation). The first non-empty of carried, inherited and own.
func Correlation(carried, inherited, own string) string {
	switch {
	case carried != "":
		return carried
	case inherited != "":
		return inherited
	}
	return own
}

// MessageCorrelation returns the correlation id of a message with metadata
// md and UUID uuid: the one it carries ([CorrelationID]), else its event id
// (ce_id), else its UUID. A message that carries none starts a
// correlation of its own.
func MessageCorrelation(md message.Metadata, uuid string) string {
	return Correlation(CorrelationID(md), md[KeyID], uuid)
}

// RestoreCorrelation gives md the correlation id it carries or its event
// id implies ([MessageCorrelation], without a UUID): the unmarshalers apply
// it so that everything that reads metadata before the handler
// (telemetry, logs, the dead-letter tool) sees the id the correlation
// middleware uses. An empty correlation id counts as none.
func RestoreCorrelation(md message.Metadata) {
	if md[KeyCorrelationID] != "" {
		return
	}
	if c := MessageCorrelation(md, ""); c != "" {
		md[KeyCorrelationID] = c
	}
}

// Inherit gives md, the metadata of a message published while handling the
// message with correlation id correlationID and id causationID, the ids it
// inherits, keeping those it carries: ce_correlationid by [Correlation]
// (what md carries, Watermill's correlation_id included; else
// correlationID; else own, the id of md's message, which then starts a
// correlation), and ce_causationid causationID when it is not empty.
// Outside a handler both are "". md must not be nil.
func Inherit(md message.Metadata, correlationID, causationID, own string) {
	if md[KeyCorrelationID] == "" {
		if c := Correlation(md[KeyWatermillCorrelationID], correlationID, own); c != "" {
			md[KeyCorrelationID] = c
		}
	}
	if causationID != "" && md[KeyCausationID] == "" {
		md[KeyCausationID] = causationID
	}
}
