package amqp

import (
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/busline/busline/schema"
)

// The marshaler publishes persistent messages. The behaviour behind the
// other safe defaults (durable topology, confirms, prefetch, mandatory)
// is tested against RabbitMQ in the black-box tests.
func TestMarshalPersistent(t *testing.T) {
	p, err := marshaler{}.Marshal(message.NewMessage("id", nil))
	if err != nil || p.DeliveryMode != amqp091.Persistent {
		t.Errorf("marshal: delivery mode %d, %v; want persistent", p.DeliveryMode, err)
	}
}

func TestDefaults(t *testing.T) {
	c := Config{}.withDefaults()
	want := Config{Prefetch: 16, Concurrency: 1, ChannelPoolSize: 4, PublishWindow: 512, QueueType: QueueTypeClassic}
	if c != want {
		t.Errorf("defaults %+v, want %+v", c, want)
	}
	c = Config{Prefetch: 1, Concurrency: 1, ChannelPoolSize: 2, PublishWindow: 8}.withDefaults()
	if c.Prefetch != 1 || c.ChannelPoolSize != 2 || c.PublishWindow != 8 {
		t.Errorf("set fields overridden: %+v", c)
	}
	// The prefetch follows a concurrency above the default prefetch.
	if c := (Config{Concurrency: 64}).withDefaults(); c.Prefetch != 64 {
		t.Errorf("prefetch %d with concurrency 64, want 64", c.Prefetch)
	}
}

func TestValidateQueueOptions(t *testing.T) {
	err := Config{URL: "amqp://x/", QueueType: "stream", MaxQueueLength: -1}.Validate()
	for _, want := range []string{`queue type "stream"`, "max queue length -1"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v, want it to mention %s", err, want)
		}
	}
	for _, qt := range []string{"", QueueTypeClassic, QueueTypeQuorum} {
		if err := (Config{URL: "amqp://x/", QueueType: qt, MaxQueueLength: 10}).Validate(); err != nil {
			t.Errorf("queue type %q: %v", qt, err)
		}
	}
}

func TestValidatePrefetchBelowConcurrency(t *testing.T) {
	err := Config{URL: "amqp://x/", Prefetch: 2, Concurrency: 4}.Validate()
	if err == nil {
		t.Fatal("prefetch 2 with concurrency 4 accepted")
	}
	if err := (Config{URL: "amqp://x/", Concurrency: 4}).Validate(); err != nil {
		t.Fatalf("concurrency 4 with the default prefetch: %v", err)
	}
}

// Metadata cannot name another UUID than the message's: a
// _watermill_message_uuid key in it is replaced by the message's UUID.
func TestMarshalIgnoresUUIDInMetadata(t *testing.T) {
	m := message.NewMessage("id-1", nil)
	m.Metadata = message.Metadata{schema.KeyID: "id-1", uuidHeader: "other"}
	p, err := marshaler{}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if v := p.Headers[uuidHeader]; v != "id-1" {
		t.Errorf("header %s = %v, want id-1", uuidHeader, v)
	}
	if back, _ := (marshaler{}).Unmarshal(amqp091.Delivery{Headers: p.Headers, MessageId: p.MessageId}); back.UUID != "id-1" {
		t.Errorf("UUID back %q, want id-1", back.UUID)
	}
}
