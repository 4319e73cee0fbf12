package schema_test

import (
	"maps"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/schema"
)

func TestKafkaMetadataNeedsNoMapping(t *testing.T) {
	// Kafka headers are the metadata: what Apply writes is what FromMetadata reads.
	env := schema.Envelope{
		ID: "id-1", Source: "/s", SpecVersion: "1.0", Type: "com.example.t",
		DataVersion: 1, DataContentType: "application/json",
	}
	msg := message.NewMessage("id-1", []byte(`{}`))
	env.Apply(msg)
	headers := maps.Clone(msg.Metadata) // what watermill-kafka writes as record headers
	got, err := schema.FromMetadata(headers)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != env.ID || got.Type != env.Type || got.DataVersion != 1 {
		t.Errorf("got %+v", got)
	}
}
