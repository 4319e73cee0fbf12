// Package schema holds Busline's event envelope (CloudEvents 1.0 attributes in
// binary content mode), the schema-version registry that routes versioned
// events to Go types, the upcasters between versions, and the codecs that
// turn values into payloads.
//
// # Envelope
//
// [Envelope] holds the CloudEvents attributes of an event independent of the
// transport. In a Watermill message they live in the metadata under the Key
// constants, the Kafka binary-mode header names (ce_id, ce_type, ...,
// content-type), so on Kafka the metadata are the record headers as they
// are. [Envelope.Apply] writes an envelope into a message (and keeps
// msg.UUID equal to ce_id); [FromMessage] reads one back, accepting binary
// mode and, from other CloudEvents producers, structured mode
// (application/cloudevents+json, attributes and data in the body), without
// ever modifying the message. [Envelope.Validate] checks the CloudEvents
// rules and reports every problem at once.
//
// Busline's own attributes are CloudEvents extensions: dataversion (schema
// version, an integer >= 1), correlationid, causationid and partitionkey.
// The event type carries no version: "com.example.order.created".
//
// On RabbitMQ (AMQP 0-9-1) the attributes travel as cloudEvents_ headers and
// the content_type property: the AMQP broker (bus/amqp: ToHeaders and FromHeaders) maps
// between the two. FromHeaders is total: it accepts the cloudEvents:
// prefix too, stringifies typed values and turns nested tables such as
// RabbitMQ's x-death into JSON, so a transport unmarshaler built on it never
// fails and never loops on a message; bad envelopes are rejected later, in
// the router, where the dead-letter middleware can act.
//
// On both brokers a correlation id equal to the event id is implied, not
// sent ([CorrelationImplied]); unmarshalers restore it
// ([RestoreCorrelation]).
//
// # Versions and upcasting
//
// A [Registry] binds each (event type, version) to a Go type with
// [Register]. The highest registered version of a type is its current
// version: what producers publish and what consumers receive. Older
// versions stay readable through upcasters ([Registry.Upcast]), pure
// functions from the encoded data of version N to that of N+1 that chain
// v1 -> v2 -> v3; they work on raw bytes, so old Go types can be deleted.
// [Registry.Check] lists every registration problem at start-up (gaps,
// duplicates, a missing current version, bad names).
//
// [Registry.Decode] and [DecodeAs] read the envelope, upcast the data to the
// current version (or to the version of the Go type asked for) and decode
// it. They never modify msg.Payload: the first upcaster works on a copy, so
// a rejected message reaches the dead-letter destination byte-identical.
// [Registry.NewMessage] and [Registry.Encode] do the reverse for a value of a
// registered Go type: a new time-ordered id, the configured source, type,
// dataversion, a dataschema derived from [WithSchemaBase], the codec's
// content type, time now; correlation and causation are inherited from the
// envelope in the context ([ContextWithEnvelope]).
//
// The default compatibility policy is backward transitive: upgrade
// consumers first. An event newer than the consumer's current version is
// rejected, not guessed at.
//
// # Errors
//
// Every rejection is an [*Error] with a machine-readable Code, also returned
// by its ErrorType method (the dead-letter reason and the OpenTelemetry
// error.type): envelope_invalid, event_type_unknown, schema_version_missing,
// schema_version_unknown (also for versions newer than the current one),
// upcast_failed, decode_failed, encode_failed. They are permanent: their
// Permanent method reports true, so the retry middleware does not retry
// them and the dead-letter middleware moves the message at once. Match them
// with errors.Is against the sentinels ([ErrUnknownVersion], ...) or with
// errors.As.
//
// # Codecs
//
// A [Codec] encodes values and names their content type. [JSON] is the
// default; [WithCodec] changes it for a registry and [WithTypeCodec] for one
// event type. Decoding rejects data whose content type the codec does not
// read (any JSON media type is fine for a JSON codec).
//
// # Concurrency
//
// Everything in this package is safe for concurrent use. A Registry takes
// registrations at any time, but is meant to be filled at start-up: reads
// use an immutable snapshot rebuilt after each registration.
package schema
