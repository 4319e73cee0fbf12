package kafka

import (
	"maps"
	"slices"
	"testing"

	"github.com/IBM/sarama"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/busline/busline/schema"
)

// marshalRecords writes what watermill-kafka's DefaultMarshaler writes
// (the _watermill_message_uuid header included), except ce_correlationid
// when it is ce_id; the record key is ce_partitionkey; unmarshalRecord
// gives back UUID, metadata (with the correlation id ce_id implies) and
// payload; a message with reserved metadata fails alone.
func TestMarshalRecords(t *testing.T) {
	withID := message.NewMessage("id-1", []byte("one"))
	withID.Metadata.Set(schema.KeyID, "id-1")
	withID.Metadata.Set(schema.KeyPartitionKey, "order-7")
	withID.Metadata.Set("empty", "")
	withID.Metadata.Set(schema.KeyCorrelationID, "id-1") // implied: not sent
	plain := message.NewMessage("id-2", []byte("two"))
	plain.Metadata.Set(schema.KeyID, "other")
	plain.Metadata.Set(schema.KeyCorrelationID, "corr-2")
	noCorr := message.NewMessage("id-5", []byte("five"))
	noCorr.Metadata.Set(schema.KeyID, "id-5")
	bare := message.NewMessage("id-3", nil)
	bare.Metadata = nil
	reserved := message.NewMessage("id-4", []byte("four"))
	reserved.Metadata.Set(uuidHeader, "x")
	msgs := []*message.Message{withID, reserved, plain, bare, noCorr}

	rb := marshalRecords("t", msgs)
	if len(rb.recs) != 4 || len(rb.failed) != 1 || rb.failed[0].Index != 1 || rb.failed[0].UUID != "id-4" {
		t.Fatalf("recs %d, failed %+v", len(rb.recs), rb.failed)
	}
	if got := []int{rb.at(0), rb.at(1), rb.at(2), rb.at(3)}; !slices.Equal(got, []int{0, 2, 3, 4}) {
		t.Fatalf("positions %v", got)
	}
	for i, rec := range rb.recs {
		m := msgs[rb.at(i)]
		want, err := wkafka.DefaultMarshaler{}.Marshal("t", m)
		if err != nil {
			t.Fatal(err)
		}
		wantH := headerMap(want.Headers)
		if schema.CorrelationImplied(m.Metadata) {
			delete(wantH, schema.KeyCorrelationID)
		}
		if got := kgoHeaderMap(rec.Headers); !maps.Equal(got, wantH) {
			t.Errorf("%s: headers %v, want %v", m.UUID, got, wantH)
		}
		if rec.Topic != "t" {
			t.Errorf("%s: topic %q", m.UUID, rec.Topic)
		}
		if string(rec.Value) != string(m.Payload) || rec.Value == nil {
			t.Errorf("%s: value %q (nil: %t)", m.UUID, rec.Value, rec.Value == nil)
		}
		if k := m.Metadata[schema.KeyPartitionKey]; k != "" {
			if string(rec.Key) != k {
				t.Errorf("%s: key %q, want %q", m.UUID, rec.Key, k)
			}
		} else if rec.Key != nil {
			t.Errorf("%s: key set without ce_partitionkey", m.UUID)
		}

		// Back from the wire.
		back := unmarshalRecord(&kgo.Record{Topic: "t", Value: rec.Value, Key: rec.Key, Headers: rec.Headers})
		wantMD := maps.Clone(m.Metadata)
		schema.RestoreCorrelation(wantMD)
		if back.UUID != m.UUID || string(back.Payload) != string(m.Payload) || !maps.Equal(back.Metadata, wantMD) && len(m.Metadata) > 0 {
			t.Errorf("round trip: %s %q %v, want %s %q %v", back.UUID, back.Payload, back.Metadata, m.UUID, m.Payload, wantMD)
		}
	}
}

func headerMap(hs []sarama.RecordHeader) map[string]string {
	m := map[string]string{}
	for _, h := range hs {
		m[string(h.Key)] = string(h.Value)
	}
	return m
}

func kgoHeaderMap(hs []kgo.RecordHeader) map[string]string {
	m := map[string]string{}
	for _, h := range hs {
		m[h.Key] = string(h.Value)
	}
	return m
}

// An empty metadata value is an empty header value, and an empty payload an
// empty record value, never a null one: a null value is a tombstone on a
// compacted topic.
func TestMarshalEmptyIsNotNull(t *testing.T) {
	m := message.NewMessage("id", nil)
	m.Metadata = message.Metadata{schema.KeyID: "id", "": "", "empty": ""}
	rb := marshalRecords("t", []*message.Message{m})
	if len(rb.recs) != 1 {
		t.Fatalf("failed: %+v", rb.failed)
	}
	if rb.recs[0].Value == nil {
		t.Error("empty payload became a null value")
	}
	for _, h := range rb.recs[0].Headers {
		if h.Value == nil {
			t.Errorf("header %q=%q has a nil value", h.Key, h.Value)
		}
	}
}
