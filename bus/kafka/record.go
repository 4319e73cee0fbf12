package kafka

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/busline/busline/internal/delivery"
	"github.com/busline/busline/schema"
)

// RecordInfo is where a consumed message came from.
type RecordInfo struct {
	Topic     string
	Partition int32
	Offset    int64
	// Timestamp is the record's timestamp (set by its producer, or by the
	// broker for log-append-time topics).
	Timestamp time.Time
}

// RecordFromContext returns where the message whose context is ctx came
// from; ok is false for a message a Kafka subscriber did not deliver.
func RecordFromContext(ctx context.Context) (info RecordInfo, ok bool) {
	if ri, _ := ctx.Value(recordInfoKey{}).(*RecordInfo); ri != nil {
		return *ri, true
	}
	return RecordInfo{}, false
}

type recordInfoKey struct{}

// recordContext is the context of a delivered message: the subscription's
// context with the record's RecordInfo and batch membership, in one
// allocation instead of a context layer for each.
type recordContext struct {
	context.Context
	info   RecordInfo
	member delivery.Member
	txn    *txnMsg // its share of the poll's transaction (transactional subscriptions)
}

func (c *recordContext) Value(key any) any {
	switch key {
	case recordInfoKey{}:
		return &c.info
	case delivery.MemberKey:
		if c.member.Batch == nil {
			return nil
		}
		return &c.member
	case txnKey{}:
		if c.txn == nil {
			return nil
		}
		return c.txn
	}
	return c.Context.Value(key)
}

// unmarshalRecord turns a record into a message. It never fails: bad input
// must reach the handler (and from there the dead-letter destination), not
// stall the partition.
//
//   - Headers become metadata; their bytes are kept as they are, also when
//     they are not valid UTF-8. A header that appears twice keeps its last
//     value.
//   - The UUID is the _watermill_message_uuid header (not kept in the
//     metadata), else the ce_id header, else "kafka:<topic>/<partition>/<offset>",
//     which is stable across redeliveries of the record.
//   - A record key with no ce_partitionkey header becomes that header, so a
//     message republished from a handler keeps its key.
//   - A record with a ce_id header and no ce_correlationid header gets its
//     ce_id as correlation id ([schema.RestoreCorrelation]).
func unmarshalRecord(rec *kgo.Record) *message.Message {
	value := rec.Value
	if value == nil {
		value = []byte{}
	}
	msg := message.NewMessage("", value)
	// Sized for the headers, a restored correlation id and a partition
	// key, so that the map does not grow; the header values share one
	// string (one allocation instead of one per header).
	md := make(message.Metadata, len(rec.Headers)+2)
	size := 0
	for _, h := range rec.Headers {
		size += len(h.Value)
	}
	var b strings.Builder
	b.Grow(size)
	for _, h := range rec.Headers {
		b.Write(h.Value)
	}
	values := b.String()
	var id string
	off := 0
	for _, h := range rec.Headers {
		v := values[off : off+len(h.Value)]
		off += len(h.Value)
		if h.Key == uuidHeader {
			id = v
			continue
		}
		md[h.Key] = v
	}
	if id == "" {
		id = md[schema.KeyID]
	}
	if id == "" {
		id = recordID(rec)
	}
	if len(rec.Key) > 0 && md[schema.KeyPartitionKey] == "" {
		md[schema.KeyPartitionKey] = string(rec.Key)
	}
	schema.RestoreCorrelation(md)
	msg.UUID = id
	msg.Metadata = md
	return msg
}

// recordID is the deterministic id of a record that carries none.
func recordID(rec *kgo.Record) string {
	return "kafka:" + rec.Topic + "/" + strconv.FormatInt(int64(rec.Partition), 10) + "/" + strconv.FormatInt(rec.Offset, 10)
}
