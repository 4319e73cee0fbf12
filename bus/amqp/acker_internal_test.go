package amqp

import (
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/internal/testserver"
)

// A held-back ack reaches RabbitMQ without any further traffic, in order
// and out of order: with prefetch 8 (acks held until 2 of them wait, or
// ackHoldBack) and 8 deliveries unacked, the 9th message is delivered only
// once the one ack the test makes arrived at the broker, which only the
// flush loop's timer can send.
func TestAckerSendsHeldAckAfterHoldBack(t *testing.T) {
	for _, tc := range []struct {
		name string
		ack  int // index of the delivery acked, of 8
	}{
		{"in order", 0},
		{"out of order", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := amqp091.Dial(testserver.AMQPURL(t))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ch, err := conn.Channel()
			if err != nil {
				t.Fatal(err)
			}
			q, err := ch.QueueDeclare(bustest.Name("acker"), false, true, true, false, nil)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 9 {
				if err := ch.Publish("", q.Name, false, false, amqp091.Publishing{Body: []byte{byte(i)}}); err != nil {
					t.Fatal(err)
				}
			}
			const prefetch = 8
			if err := ch.Qos(prefetch, 0, false); err != nil {
				t.Fatal(err)
			}
			deliveries, err := ch.Consume(q.Name, "", false, true, false, false, nil)
			if err != nil {
				t.Fatal(err)
			}
			next := func(within time.Duration) (amqp091.Delivery, bool) {
				select {
				case d := <-deliveries:
					return d, true
				case <-time.After(within):
					return amqp091.Delivery{}, false
				}
			}
			var tags []uint64
			for range prefetch {
				d, ok := next(10 * time.Second)
				if !ok {
					t.Fatalf("%d of %d deliveries", len(tags), prefetch)
				}
				tags = append(tags, d.DeliveryTag)
			}

			a := newAcker(ch, prefetch)
			if a.maxHeld != 2 {
				t.Fatalf("maxHeld %d with prefetch %d, want 2", a.maxHeld, prefetch)
			}
			sub := &subscription{s: &subscriber{logger: watermill.NopLogger{}}}
			stop, stopped := make(chan struct{}), make(chan struct{})
			go func() { defer close(stopped); sub.flushLoop(a, stop) }()
			defer func() { close(stop); <-stopped }()

			a.ack(tags[tc.ack])
			d, ok := next(10 * time.Second)
			if !ok {
				t.Fatal("the held-back ack never reached RabbitMQ: no 9th delivery")
			}
			if d.Body[0] != 8 {
				t.Errorf("delivery %d, want the 9th (8)", d.Body[0])
			}
		})
	}
}
