package kafka

import (
	"fmt"
	"math/rand/v2"
	"strconv"

	"github.com/IBM/sarama"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/schema"
)

// marshaler turns a Watermill message into a Kafka record: metadata become
// headers 1:1 (Watermill's DefaultMarshaler; the UUID travels in the
// _watermill_message_uuid header), and the record key is the metadata value
// schema.KeyPartitionKey when it is set. A message without that key gets no
// record key (not an empty one, which Watermill's partitioning marshaler
// would send and which would put every such message on one partition), so
// the partitioner spreads such messages over the partitions.
//
// Unmarshal never fails: see [marshaler.Unmarshal].
type marshaler struct{}

var _ wkafka.MarshalerUnmarshaler = marshaler{}

// Marshal implements wkafka.Marshaler. The record is what
// wkafka.DefaultMarshaler makes (the same headers), built with fewer
// allocations: the header slice at its final size, and every header key and
// value in one buffer. The payload is not copied: the message must not
// change until Publish returns.
func (marshaler) Marshal(topic string, msg *message.Message) (*sarama.ProducerMessage, error) {
	if msg.Metadata[wkafka.UUIDHeaderKey] != "" {
		return nil, fmt.Errorf("metadata %s is reserved by watermill for message UUID", wkafka.UUIDHeaderKey)
	}
	n := len(wkafka.UUIDHeaderKey) + len(msg.UUID)
	for k, v := range msg.Metadata {
		n += len(k) + len(v)
	}
	buf := make([]byte, 0, n)
	headers := make([]sarama.RecordHeader, 0, 1+len(msg.Metadata))
	add := func(k, v string) {
		s := len(buf)
		buf = append(buf, k...)
		kb := buf[s:len(buf):len(buf)]
		s = len(buf)
		buf = append(buf, v...)
		headers = append(headers, sarama.RecordHeader{Key: kb, Value: buf[s:len(buf):len(buf)]})
	}
	add(wkafka.UUIDHeaderKey, msg.UUID)
	for k, v := range msg.Metadata {
		add(k, v)
	}
	rec := &sarama.ProducerMessage{
		Topic:   topic,
		Value:   sarama.ByteEncoder(msg.Payload),
		Headers: headers,
	}
	if key := msg.Metadata[schema.KeyPartitionKey]; key != "" {
		rec.Key = sarama.StringEncoder(key)
	}
	return rec, nil
}

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
	return msg, nil
}

// recordID is the deterministic id of a record that carries none.
func recordID(rec *sarama.ConsumerMessage) string {
	return "kafka:" + rec.Topic + "/" + strconv.FormatInt(int64(rec.Partition), 10) + "/" + strconv.FormatInt(rec.Offset, 10)
}

// keyPartitioner chooses a record's partition like Kafka's own Java client
// (and franz-go's default): murmur2 of the key, the sign bit masked, modulo
// the partition count. Services in other languages that key their records
// the same way therefore write a key to the same partition as Busline does,
// and order per key holds across them. Sarama's default partitioner hashes
// with FNV-1a, which does not agree. A record without a key goes to a random
// partition.
type keyPartitioner struct{}

func newKeyPartitioner(string) sarama.Partitioner { return keyPartitioner{} }

// Partition implements sarama.Partitioner.
func (keyPartitioner) Partition(msg *sarama.ProducerMessage, n int32) (int32, error) {
	if msg.Key == nil {
		return rand.Int32N(n), nil
	}
	key, err := msg.Key.Encode()
	if err != nil {
		return -1, err
	}
	if key == nil {
		return rand.Int32N(n), nil
	}
	return int32(murmur2(key)&0x7fffffff) % n, nil
}

// RequiresConsistency implements sarama.Partitioner: a key always maps to
// the same partition.
func (keyPartitioner) RequiresConsistency() bool { return true }

// MessageRequiresConsistency implements sarama.DynamicConsistencyPartitioner:
// a record without a key may go to any partition that is available.
func (keyPartitioner) MessageRequiresConsistency(msg *sarama.ProducerMessage) bool {
	return msg.Key != nil
}

// murmur2 is the hash of Kafka's default partitioner
// (org.apache.kafka.common.utils.Utils.murmur2).
func murmur2(b []byte) uint32 {
	const (
		seed uint32 = 0x9747b28c
		m    uint32 = 0x5bd1e995
		r           = 24
	)
	h := seed ^ uint32(len(b))
	for len(b) >= 4 {
		k := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
		b = b[4:]
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	switch len(b) {
	case 3:
		h ^= uint32(b[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(b[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(b[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return h
}
