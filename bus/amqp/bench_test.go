package amqp_test

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/bustest"
)

// BenchmarkPublish publishes one persistent message per call to a prepared
// topic and waits for its confirm: the cost of Publish's own path (pool
// slot, declared-topology check, marshal, confirm bookkeeping) on top of
// RabbitMQ's round trip and disk sync.
func BenchmarkPublish(b *testing.B) {
	tp := newTopology(b)
	br := newBroker(b, amqp.Config{})
	topic, group := tp.topic("bench-publish"), tp.group("g")
	if err := br.Prepare(bustest.Context(b, wait), topic, group); err != nil {
		b.Fatal(err)
	}
	msgs := make([]*message.Message, b.N)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), []byte("payload"))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if err := br.Publisher().Publish(topic, msgs[i]); err != nil {
			b.Fatal(err)
		}
	}
}
