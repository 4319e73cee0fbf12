package schema

// Header prefixes of the CloudEvents protocol bindings.
const (
	// KafkaPrefix starts every CloudEvents attribute header in the Kafka
	// binding (binary mode). Busline's metadata keys use it too, so Kafka
	// needs no mapping: metadata are the record headers.
	KafkaPrefix = "ce_"
	// AMQPPrefix starts every CloudEvents attribute header that Busline
	// writes to RabbitMQ (AMQP 0-9-1 headers table). It is the prefix the
	// CloudEvents AMQP binding prefers.
	AMQPPrefix = "cloudEvents_"
	// AMQPAltPrefix is the other prefix the CloudEvents AMQP binding allows
	// (used by the CloudEvents Go SDK). It is accepted on input, never
	// written.
	AMQPAltPrefix = "cloudEvents:"
	// AMQPTransportPrefix starts the private metadata keys an AMQP
	// unmarshaler records about one delivery (delivery tag, exchange, routing
	// key). The AMQP broker (bus/amqp, ToHeaders) drops them: they describe a past delivery and
	// must not travel with a republished message.
	AMQPTransportPrefix = PrivatePrefix + "amqp_"
)
