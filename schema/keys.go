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

// PrivatePrefix starts every metadata key that belongs to Busline itself
// (dead-letter details, transport facts). Such keys are never CloudEvents
// attributes.
const PrivatePrefix = "busline_"
