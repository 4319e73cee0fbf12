package kafka

import (
	"fmt"
	"strconv"

	"github.com/IBM/sarama"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/busline/busline/schema"
)

// marshaler is the subscriber's unmarshaler (see [marshaler.Unmarshal]);
// [marshalRecords] is its other half, used by the publisher.
type marshaler struct{}

var _ wkafka.Unmarshaler = marshaler{}

// records are the Kafka records of the messages of one Publish call.
type records struct {
	// recs are the records of the messages that marshaled, in order.
	recs []*kgo.Record
	// pos[i] is the position in the Publish call of recs[i]; nil when
	// every message marshaled (pos[i] == i).
	pos []int
	// failed are the messages that did not marshal.
	failed []FailedMessage
}

// at returns the position in the Publish call of recs[i].
func (r *records) at(i int) int {
	if r.pos == nil {
		return i
	}
	return r.pos[i]
}

// marshalRecords turns msgs into records of topic. Metadata become headers
// 1:1 (as watermill-kafka's DefaultMarshaler does), and the record key is
// the metadata value schema.KeyPartitionKey when it is set. A message
// without that key gets no record key (not an empty one, which Watermill's
// partitioning marshaler would send and which would put every such message
// on one partition). An empty payload is an empty value, never a null one
// (a tombstone on a compacted topic).
//
// The UUID travels once: in the ce_id header when ce_id is the UUID (every
// message the bus publishes), else in Watermill's
// _watermill_message_uuid header. Unmarshal takes the UUID from either, so
// Busline reads both; a consumer using watermill-kafka's DefaultMarshaler
// sees an empty UUID on the former, and ce_id in its metadata. A correlation
// id equal to the event id is left out too ([schema.CorrelationImplied]) and
// restored by Unmarshal: each header costs the producer, the broker and the
// consumer on every message (measured against kfake: about 10% of the
// publishing throughput per 36-byte header). A message whose metadata holds
// _watermill_message_uuid, reserved by Watermill, fails.
//
// It allocates little, whatever the number of messages: the records live in
// one slice, the headers in one slice sized from the metadata counts, and
// every header value and record key in byte chunks of at least
// marshalChunk bytes. Each message's metadata is read in one pass. The
// payloads are not copied: a message must not change until Publish
// returns.
func marshalRecords(topic string, msgs []*message.Message) records {
	nHeaders := 0
	for _, m := range msgs {
		nHeaders += len(m.Metadata) + 1 // the UUID header, where needed
	}
	var (
		out     = records{recs: make([]*kgo.Record, 0, len(msgs))}
		store   = make([]kgo.Record, len(msgs))
		headers = make([]kgo.RecordHeader, 0, nHeaders)
		buf     []byte
	)
	bytes := func(v string) []byte {
		if v == "" {
			return []byte{} // empty, not null, on the wire
		}
		if cap(buf)-len(buf) < len(v) {
			buf = make([]byte, 0, max(marshalChunk, len(v)))
		}
		s := len(buf)
		buf = append(buf, v...)
		return buf[s:len(buf):len(buf)]
	}
	for i, m := range msgs {
		h := len(headers)
		id := m.Metadata[schema.KeyID]
		if id != m.UUID {
			headers = append(headers, kgo.RecordHeader{Key: wkafka.UUIDHeaderKey, Value: bytes(m.UUID)})
		}
		var key string
		reserved := false
		for k, v := range m.Metadata {
			switch k {
			case wkafka.UUIDHeaderKey:
				reserved = reserved || v != ""
			case schema.KeyCorrelationID:
				if v == id && id != "" { // implied: schema.CorrelationImplied
					continue
				}
			case schema.KeyPartitionKey:
				key = v
			}
			headers = append(headers, kgo.RecordHeader{Key: k, Value: bytes(v)})
		}
		if reserved {
			headers = headers[:h]
			if out.pos == nil {
				out.pos = make([]int, len(out.recs), len(msgs))
				for j := range out.pos {
					out.pos[j] = j
				}
			}
			out.failed = append(out.failed, FailedMessage{Index: i, UUID: m.UUID,
				Err: fmt.Errorf("kafka: marshal: metadata %s is reserved by watermill for message UUID", wkafka.UUIDHeaderKey)})
			continue
		}
		rec := &store[i]
		rec.Topic = topic
		rec.Headers = headers[h:len(headers):len(headers)]
		rec.Value = m.Payload
		if rec.Value == nil {
			rec.Value = []byte{}
		}
		if key != "" {
			rec.Key = bytes(key)
		}
		out.recs = append(out.recs, rec)
		if out.pos != nil {
			out.pos = append(out.pos, i)
		}
	}
	return out
}

// marshalChunk is the smallest byte chunk [marshalRecords] allocates for
// header keys and values: about 40 messages as the bus publishes them.
const marshalChunk = 4096

// Unmarshal implements wkafka.Unmarshaler and never returns an error: in
// watermill-kafka an unmarshal error ends the partition's claim, the group
// rejoins, the same record fails again, forever, and nothing behind it on the
// partition is ever delivered. Bad input must instead reach the handler (and
// from there the dead-letter destination).
//
//   - Headers become metadata; their bytes are kept as they are, also when
//     they are not valid UTF-8.
//   - A record without the _watermill_message_uuid header (written by a
//     producer that is not Watermill) gets its ce_id header as UUID, or else
//     "kafka:<topic>/<partition>/<offset>", which is stable across
//     redeliveries of the record.
//   - A record key with no ce_partitionkey header becomes that header, so a
//     message republished from a handler keeps its key.
//   - A record with a ce_id header and no ce_correlationid header gets its
//     ce_id as correlation id ([schema.RestoreCorrelation]).
func (marshaler) Unmarshal(rec *sarama.ConsumerMessage) (*message.Message, error) {
	msg, err := wkafka.DefaultMarshaler{}.Unmarshal(rec)
	if err != nil || msg == nil {
		// DefaultMarshaler does not fail today; if a future one does, keep
		// the record rather than stall the partition.
		msg = message.NewMessage("", rec.Value)
		for _, h := range rec.Headers {
			if h != nil && string(h.Key) != wkafka.UUIDHeaderKey {
				msg.Metadata.Set(string(h.Key), string(h.Value))
			}
		}
	}
	if msg.Metadata == nil {
		msg.Metadata = message.Metadata{}
	}
	if msg.UUID == "" {
		msg.UUID = msg.Metadata.Get(schema.KeyID)
	}
	if msg.UUID == "" {
		msg.UUID = recordID(rec)
	}
	if len(rec.Key) > 0 && msg.Metadata.Get(schema.KeyPartitionKey) == "" {
		msg.Metadata.Set(schema.KeyPartitionKey, string(rec.Key))
	}
	schema.RestoreCorrelation(msg.Metadata)
	return msg, nil
}

// recordID is the deterministic id of a record that carries none.
func recordID(rec *sarama.ConsumerMessage) string {
	return "kafka:" + rec.Topic + "/" + strconv.FormatInt(int64(rec.Partition), 10) + "/" + strconv.FormatInt(rec.Offset, 10)
}
