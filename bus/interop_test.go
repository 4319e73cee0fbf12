package bus_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/internal/testserver"
	"github.com/busline/busline/middleware"
	"github.com/busline/busline/schema"
)

// A stock watermill-amqp v2 subscriber reads the UUID of a message Busline
// published from the _watermill_message_uuid header: it must find the
// message's UUID there, not an empty string.
func TestInteropWatermillAMQPSubscriberSeesUUID(t *testing.T) {
	url := testserver.AMQPURL(t)
	topic := bustest.Name("interop-uuid")
	ctx := bustest.Context(t, 30*time.Second)
	b, err := bus.New(bus.Config{Broker: bus.BrokerAMQP, AMQP: amqp.Config{URL: url}, DeadLetterTopic: bustest.Name("dlq")})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())

	stockQueue := topic + ".stock"
	sub, err := wamqp.NewSubscriber(
		wamqp.NewDurablePubSubConfig(url, func(string) string { return stockQueue }),
		watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	t.Cleanup(func() { testserver.DeleteAMQP(t, url, []string{stockQueue}, []string{topic}) })
	msgs, err := sub.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}

	// As most messages are published: UUID and event id equal.
	id := watermill.NewUUID()
	if err := b.Publish(ctx, topic, message.NewMessage(id, []byte("x"))); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-msgs:
		m.Ack()
		if m.UUID != id {
			t.Errorf("stock subscriber's msg.UUID %q, want %q", m.UUID, id)
		}
		if m.Metadata.Get("cloudEvents_id") != id {
			t.Errorf("metadata %v: want cloudEvents_id %s", m.Metadata, id)
		}
	case <-ctx.Done():
		t.Fatal("stock subscriber received nothing")
	}
}

// Watermill's correlation id (metadata correlation_id, set by its
// SetCorrelationID) is the correlation of a message that has no
// ce_correlationid; ce_correlationid wins when both are present. What the
// handler publishes carries it on.
func TestInteropWatermillCorrelationID(t *testing.T) {
	b, err := bus.New(bus.Config{})
	if err != nil {
		t.Fatal(err)
	}
	topic, next := bustest.Name("interop-corr"), bustest.Name("interop-corr-next")
	type seen struct{ id, corr string }
	got := make(chan seen, 4)
	forwarded := make(chan message.Metadata, 4)
	if err := b.Handle("h", topic, func(ctx context.Context, m *message.Message) error {
		got <- seen{m.UUID, middleware.CorrelationIDFromContext(ctx)}
		return b.Publish(ctx, next, message.NewMessage("out-"+m.UUID, nil))
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Handle("sink", next, func(_ context.Context, m *message.Message) error {
		forwarded <- m.Metadata
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	onlyWatermill := message.NewMessage("w-only", nil)
	wmiddleware.SetCorrelationID("corr-from-watermill", onlyWatermill)
	both := message.NewMessage("both", nil)
	wmiddleware.SetCorrelationID("corr-from-watermill", both)
	both.Metadata.Set(schema.KeyCorrelationID, "corr-from-cloudevents")
	if err := b.Publish(context.Background(), topic, onlyWatermill, both); err != nil {
		t.Fatal(err)
	}
	runBus(t, b)
	want := map[string]string{"w-only": "corr-from-watermill", "both": "corr-from-cloudevents"}
	for range 2 {
		select {
		case s := <-got:
			if s.corr != want[s.id] {
				t.Errorf("%s: handler's correlation %q, want %q", s.id, s.corr, want[s.id])
			}
		case <-time.After(10 * time.Second):
			t.Fatal("message not handled within 10s")
		}
	}
	for range 2 {
		select {
		case md := <-forwarded:
			if c := md.Get(schema.KeyCorrelationID); c != "corr-from-watermill" && c != "corr-from-cloudevents" {
				t.Errorf("forwarded message's ce_correlationid %q", c)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("message not forwarded within 10s")
		}
	}
}

// A message the stock watermill-amqp v2 publisher sends with Watermill's
// correlation id keeps that correlation in a Busline handler on RabbitMQ.
func TestInteropWatermillAMQPCorrelationID(t *testing.T) {
	url := testserver.AMQPURL(t)
	topic := bustest.Name("interop-wcorr")
	cfg := bus.Config{Broker: bus.BrokerAMQP, AMQP: amqp.Config{URL: url}, Group: bustest.Name("svc"), DeadLetterTopic: bustest.Name("dlq")}
	b, err := bus.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		testserver.DeleteAMQP(t, url, []string{amqp.QueueName(topic, cfg.Group+".h")}, []string{topic})
	})
	got := make(chan string, 1)
	if err := b.Handle("h", topic, func(ctx context.Context, m *message.Message) error {
		got <- middleware.CorrelationIDFromContext(ctx)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	runBus(t, b)

	pub, err := wamqp.NewPublisher(wamqp.NewDurablePubSubConfig(url, nil), watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	m := message.NewMessage(watermill.NewUUID(), []byte("x"))
	wmiddleware.SetCorrelationID("corr-from-watermill", m)
	if err := pub.Publish(topic, m); err != nil {
		t.Fatal(err)
	}
	select {
	case corr := <-got:
		if corr != "corr-from-watermill" {
			t.Errorf("handler's correlation %q, want corr-from-watermill", corr)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("message not handled within 10s")
	}
}

// Kafka and RabbitMQ spans carry server.address, server.port and
// messaging.client.id from the configuration; the RabbitMQ process span
// carries the delivery tag.
func TestInteropSpanServerAttributes(t *testing.T) {
	for _, br := range telBrokers {
		if br.name == "memory" {
			continue
		}
		t.Run(br.name, func(t *testing.T) {
			exp, tp := newTracing()
			cfg := br.config(t)
			cfg.Group = bustest.Name("svc")
			cfg.DeadLetterTopic = bustest.Name("dlq")
			b, err := bus.New(cfg, bus.WithTracerProvider(tp))
			if err != nil {
				t.Fatal(err)
			}
			topic := bustest.Name("interop-attrs")
			if br.name == "amqp" {
				t.Cleanup(func() {
					testserver.DeleteAMQP(t, cfg.AMQP.URL, []string{amqp.QueueName(topic, cfg.Group+".h")}, []string{topic})
				})
			}
			handleOne(t, b, topic)

			var host string
			var port int
			sendID, procID := "busline", "busline"
			if br.name == "amqp" {
				host, port = cfg.AMQP.ServerAddress()
				sendID, procID = amqp.PublishConnectionName, amqp.ConsumeConnectionName
			} else {
				host, port = cfg.Kafka.ServerAddress()
			}
			if host == "" || port == 0 {
				t.Fatalf("no server address in the configuration: %q %d", host, port)
			}
			var send, proc *tracetest.SpanStub
			for _, s := range exp.GetSpans() {
				switch {
				case s.SpanKind == trace.SpanKindProducer && strings.HasSuffix(s.Name, " "+topic):
					send = &s
				case s.SpanKind == trace.SpanKindConsumer && strings.HasPrefix(s.Name, "process "+topic):
					proc = &s
				}
			}
			if send == nil || proc == nil {
				t.Fatalf("send span %v, process span %v", send, proc)
			}
			wantAttrs(t, "send span", send.Attributes, map[string]any{
				"server.address": host, "server.port": port, "messaging.client.id": sendID,
			})
			want := map[string]any{"server.address": host, "server.port": port, "messaging.client.id": procID}
			if br.name == "amqp" {
				want["messaging.rabbitmq.message.delivery_tag"] = 1 // the first delivery on the channel
			}
			wantAttrs(t, "process span", proc.Attributes, want)
		})
	}
}
