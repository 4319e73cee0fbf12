package kafka

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/schema"
)

// BenchmarkMarshalRecords marshals batches of 100 messages as the bus
// publishes them (ce_id and ce_correlationid, both the UUID); ns/op is per
// message.
func BenchmarkMarshalRecords(b *testing.B) {
	msgs := make([]*message.Message, 100)
	for i := range msgs {
		id := watermill.NewUUID()
		msgs[i] = message.NewMessage(id, []byte("0123456789abcdef"))
		msgs[i].Metadata = message.Metadata{schema.KeyID: id, schema.KeyCorrelationID: id}
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if i%len(msgs) == 0 {
			_ = marshalRecords("t", msgs)
		}
	}
}
