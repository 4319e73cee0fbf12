package schema

// Metadata keys of the CloudEvents 1.0 envelope as Busline stores them in
// Watermill message metadata. They are the Kafka binary-mode header names
// (ce_ prefix); the RabbitMQ marshaler maps them to cloudEvents_ headers and
// the content_type property on the wire and back.
const (
	KeyID              = "ce_id"
	KeySource          = "ce_source"
	KeySpecVersion     = "ce_specversion"
	KeyType            = "ce_type"
	KeyTime            = "ce_time"
	KeySubject         = "ce_subject"
	KeyDataSchema      = "ce_dataschema"
	KeyDataVersion     = "ce_dataversion"
	KeyCorrelationID   = "ce_correlationid"
	KeyCausationID     = "ce_causationid"
	KeyPartitionKey    = "ce_partitionkey"
	KeyDataContentType = "content-type"
)

// KeyWatermillCorrelationID is the metadata key of Watermill's own
// correlation id (its middleware.CorrelationIDMetadataKey, set by
// middleware.SetCorrelationID). Busline accepts it on input as the
// correlation id of a message that has no ce_correlationid; when both are
// present, ce_correlationid wins (see [CorrelationID]).
const KeyWatermillCorrelationID = "correlation_id"

// PrivatePrefix starts every metadata key that belongs to Busline itself
// (dead-letter details, transport facts). Such keys are never CloudEvents
// attributes.
const PrivatePrefix = "busline_"
