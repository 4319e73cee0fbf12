package amqp

import (
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/busline/busline/schema"
)

// Metadata keys the subscriber adds to every delivered message. They
// describe this one delivery, not the event, and are dropped when a
// message is published again.
const (
	// KeyExchange is the exchange the delivery was published to.
	KeyExchange = schema.AMQPTransportPrefix + "exchange"
	// KeyRoutingKey is the routing key the delivery was published with.
	KeyRoutingKey = schema.AMQPTransportPrefix + "routing_key"
	// KeyRedelivered is "true" when RabbitMQ delivered the message before
	// (it was nacked, or its consumer went away before acking), else
	// "false".
	KeyRedelivered = schema.AMQPTransportPrefix + "redelivered"
	// KeyDeliveryTag is the delivery tag of the delivery on its channel
	// (messaging.rabbitmq.message.delivery_tag on the process span).
	KeyDeliveryTag = schema.AMQPTransportPrefix + "delivery_tag"
)

// uuidHeader carries the Watermill message UUID, under the name
// watermill-amqp uses, so Busline and plain watermill-amqp services read
// each other's ids.
const uuidHeader = wamqp.DefaultMessageUUIDHeaderKey

// The headers of the event id and the correlation id (schema.KeyID and
// schema.KeyCorrelationID on the wire).
const (
	idHeader          = schema.AMQPPrefix + "id"
	correlationHeader = schema.AMQPPrefix + "correlationid"
)

// marshaler maps Watermill messages to AMQP 0-9-1 and back. Marshal never
// fails and Unmarshal is total: a delivery with odd headers (RabbitMQ's
// x-death table, typed values from other producers) becomes a message whose
// metadata holds those values as strings, so a bad header can never make
// the subscriber nack and requeue a message forever (watermill-amqp #65).
type marshaler struct{}

var _ wamqp.Marshaler = marshaler{}

// Marshal builds a persistent publishing: CloudEvents attributes as
// cloudEvents_* headers, content-type as the content_type property, the
// event id mirrored to the message_id property (the message UUID when there
// is no event id) and ce_time to timestamp.
//
// The message UUID always travels in the _watermill_message_uuid header
// too, even when it equals the event id: the stock watermill-amqp
// subscriber reads the UUID from that header only, and a Watermill service
// downstream would otherwise see an empty msg.UUID (no id for its dedup
// and logs). What the receiver can tell from the rest is left out, because
// RabbitMQ pays for every header of every message (measured: three 36-byte
// header values in place of one cost about a fifth of the throughput of a
// persistent, confirmed queue): the correlation id travels only when it
// differs from the event id ([schema.CorrelationImplied]).
func (marshaler) Marshal(msg *message.Message) (amqp091.Publishing, error) {
	md := msg.Metadata
	// Drops the transport keys (schema.AMQPTransportPrefix) too.
	headers, contentType := ToHeaders(md)
	id := md[schema.KeyID]
	// The metadata must not name another UUID than the message's.
	headers[uuidHeader] = msg.UUID
	if schema.CorrelationImplied(md) {
		delete(headers, correlationHeader)
	}
	if id == "" {
		id = msg.UUID
	}

	p := amqp091.Publishing{
		Headers:      headers,
		ContentType:  contentType,
		DeliveryMode: amqp091.Persistent,
		MessageId:    id,
		Body:         msg.Payload,
	}
	if t, err := time.Parse(time.RFC3339Nano, md[schema.KeyTime]); err == nil {
		p.Timestamp = t
	}
	return p, nil
}

// Unmarshal builds a message from any delivery and never fails. Its UUID is,
// in this order, the _watermill_message_uuid header, the cloudEvents_id
// header, the message_id property, or a new UUID. Metadata is the headers
// mapped back (cloudEvents_x and cloudEvents:x to ce_x, every value as a
// string), content-type from the content_type property, ce_correlationid
// from the correlation_id property when no header carries it, else from
// the event id ([schema.RestoreCorrelation]), and the delivery facts
// KeyExchange, KeyRoutingKey, KeyRedelivered and KeyDeliveryTag.
func (marshaler) Unmarshal(d amqp091.Delivery) (*message.Message, error) {
	md := FromHeaders(d.Headers, d.ContentType)

	id := md[uuidHeader]
	delete(md, uuidHeader)
	for _, alt := range []string{md[schema.KeyID], d.MessageId} {
		if id == "" {
			id = alt
		}
	}
	if id == "" {
		id = watermill.NewUUID()
	}

	if md[schema.KeyCorrelationID] == "" && d.CorrelationId != "" {
		md[schema.KeyCorrelationID] = d.CorrelationId
	}
	schema.RestoreCorrelation(md)
	md[KeyExchange] = d.Exchange
	md[KeyRoutingKey] = d.RoutingKey
	md[KeyRedelivered] = strconv.FormatBool(d.Redelivered)
	md[KeyDeliveryTag] = strconv.FormatUint(d.DeliveryTag, 10)

	msg := message.NewMessage(id, d.Body)
	msg.Metadata = md
	return msg, nil
}
