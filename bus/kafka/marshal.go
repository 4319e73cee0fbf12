package kafka

import (
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/busline/busline/bus/broker"
	"github.com/busline/busline/schema"
)

// uuidHeader is the header in which Watermill's Kafka marshalers carry a
// message's UUID (watermill-kafka's UUIDHeaderKey).
const uuidHeader = "_watermill_message_uuid"

// records are the Kafka records of the messages of one Publish call.
type records struct {
	// recs are the records of the messages that marshaled, in order.
	recs []*kgo.Record
	// pos[i] is the position in the Publish call of recs[i]; nil when
	// every message marshaled (pos[i] == i).
	pos []int
	// failed are the messages that did not marshal.
	failed []broker.FailedMessage
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
// The UUID always travels in Watermill's _watermill_message_uuid header, so
// that a consumer using watermill-kafka's own unmarshaler sees it as
// msg.UUID (for its dedup and logs); the CloudEvents id travels in ce_id.
// [unmarshalRecord] reads the UUID from either. A correlation id equal to
// the event id is left out ([schema.CorrelationImplied]) and restored by
// the unmarshaler: each header costs the producer, the broker and the
// consumer on every message (measured against kfake: about 7-10% of the
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
		headers = append(headers, kgo.RecordHeader{Key: uuidHeader, Value: bytes(m.UUID)})
		var key string
		reserved := false
		for k, v := range m.Metadata {
			switch k {
			case uuidHeader:
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
			out.failed = append(out.failed, broker.FailedMessage{Index: i, UUID: m.UUID,
				Err: fmt.Errorf("kafka: marshal: metadata %s is reserved by watermill for message UUID", uuidHeader)})
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
