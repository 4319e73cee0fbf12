package bus_test

// End-to-end tests of the schema envelope and the typed handlers through the
// real brokers: the in-process broker, Kafka (kfake) and RabbitMQ.

import (
	"bytes"
	"context"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/handlers"
	"github.com/busline/busline/internal/ordertest"
	"github.com/busline/busline/internal/testserver"
	"github.com/busline/busline/middleware"
	"github.com/busline/busline/schema"
)

// e2eWait bounds every wait for a message.
const e2eWait = 20 * time.Second

// The order in three versions (internal/ordertest), and a fourth.
const e2eOrderCreated = ordertest.Created

type (
	e2eOrderV1 = ordertest.V1
	e2eOrderV3 = ordertest.V3
)

type e2eOrderV4 struct {
	OrderID string `json:"order_id"`
	Total   string `json:"total"`
}

// e2eRegistries returns the registries of an old v1 producer, the v3
// consumer (v1 -> v2 -> v3 upcasters) and a newer v4 producer.
func e2eRegistries(t *testing.T) (v1, v3, v4 *schema.Registry) {
	t.Helper()
	v1 = schema.NewRegistry(schema.WithSource("/legacy-orders"))
	schema.Register[e2eOrderV1](v1, e2eOrderCreated, 1)

	v3 = schema.NewRegistry(schema.WithSource("/orders"),
		schema.WithSchemaBase("https://schemas.example.com/events"))
	schema.Register[e2eOrderV3](v3, e2eOrderCreated, 3)
	v3.Upcast(e2eOrderCreated, 1, 2, ordertest.Up1to2)
	v3.Upcast(e2eOrderCreated, 2, 3, ordertest.Up2to3)

	v4 = schema.NewRegistry(schema.WithSource("/orders-next"))
	schema.Register[e2eOrderV4](v4, e2eOrderCreated, 4)
	for _, r := range []*schema.Registry{v1, v3, v4} {
		if err := r.Check(); err != nil {
			t.Fatal(err)
		}
	}
	return v1, v3, v4
}

// e2eBroker is one broker configuration under test.
type e2eBroker struct {
	name string
	// config returns the bus configuration, skipping the test when the
	// broker is unreachable (failing under CI).
	config func(t *testing.T) bus.Config
	// deadLetters, when set, subscribes to the dead-letter topic as group
	// bus.DeadLetterGroup with a broker client of its own.
	deadLetters func(t *testing.T, cfg bus.Config) <-chan *message.Message
}

func e2eBrokers() []e2eBroker {
	return []e2eBroker{
		{
			name:   "memory",
			config: func(*testing.T) bus.Config { return bus.Config{} },
		},
		{
			name: "kafka",
			config: func(t *testing.T) bus.Config {
				return bus.Config{Broker: bus.BrokerKafka, Kafka: kafka.Config{Brokers: testserver.Kafka(t, 1)}}
			},
			deadLetters: func(t *testing.T, cfg bus.Config) <-chan *message.Message {
				k, err := kafka.New(cfg.Kafka, watermill.NopLogger{})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { k.Close() })
				return e2eSubscribe(t, k.Subscriber, cfg.DeadLetterTopic)
			},
		},
		{
			name: "amqp",
			config: func(t *testing.T) bus.Config {
				return bus.Config{Broker: bus.BrokerAMQP, AMQP: amqp.Config{URL: testserver.AMQPURL(t)}}
			},
			deadLetters: func(t *testing.T, cfg bus.Config) <-chan *message.Message {
				a, err := amqp.New(cfg.AMQP, watermill.NopLogger{})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { a.Close() })
				return e2eSubscribe(t, a.Subscriber, cfg.DeadLetterTopic)
			},
		},
	}
}

func e2eSubscribe(t *testing.T, newSub func(string) (message.Subscriber, error), topic string) <-chan *message.Message {
	t.Helper()
	sub, err := newSub(bus.DeadLetterGroup)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := sub.Subscribe(ctx, topic)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		sub.Close()
	})
	return ch
}

// e2eRun starts b and returns a function that closes it and checks Run's
// result.
func e2eRun(t *testing.T, b *bus.Bus) func() {
	t.Helper()
	ran := make(chan error, 1)
	go func() { ran <- b.Run(context.Background()) }()
	return func() {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), e2eWait)
		defer cancel()
		if err := b.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
		select {
		case err := <-ran:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-ctx.Done():
			t.Error("Run did not return after Close")
		}
	}
}

func e2eReceive[V any](t *testing.T, what string, ch <-chan V) V {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(e2eWait):
		t.Fatalf("no %s within %v", what, e2eWait)
	}
	panic("unreachable")
}

// handledEvent is what the typed v3 handler saw.
type handledEvent struct {
	ev  e2eOrderV3
	env schema.Envelope
}

// TestSchemaEndToEnd runs, on each broker, through one bus:
//   - an envelope round trip: every attribute the producer set arrives
//     unchanged (on RabbitMQ, a plain amqp091-go consumer on a queue of its
//     own also sees cloudEvents_ headers and the content_type property);
//   - a v1 producer and a v3 consumer: the typed handler gets the event
//     upcast v1 -> v2 -> v3;
//   - a v4 event sent to the v3 consumer: it reaches the dead-letter topic
//     with busline_dlq_reason schema_version_unknown, payload byte-identical,
//     for a handler of the dead-letter topic and for the group
//     bus.DeadLetterGroup, and the typed handler never sees it.
func TestSchemaEndToEnd(t *testing.T) {
	for _, br := range e2eBrokers() {
		t.Run(br.name, func(t *testing.T) {
			t.Parallel()
			cfg := br.config(t)
			cfg.Group = bustest.Name("e2e")
			cfg.DeadLetterTopic = bustest.Name("e2e-dlq")
			cfg.ShutdownTimeout = 10 * time.Second
			rtTopic, ordersTopic := bustest.Name("e2e-envelope"), bustest.Name("e2e-orders")
			if cfg.Broker == bus.BrokerAMQP {
				e2eCleanupAMQP(t, cfg, []string{rtTopic, ordersTopic, cfg.DeadLetterTopic},
					[]string{cfg.Group + ".envelope", cfg.Group + ".billing", cfg.Group + ".deadletters", bus.DeadLetterGroup, "raw"})
			}
			v1Reg, v3Reg, v4Reg := e2eRegistries(t)

			b, err := bus.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			var dlqGroup <-chan *message.Message
			if br.deadLetters != nil {
				dlqGroup = br.deadLetters(t, b.Config())
			}

			roundTrip := make(chan *message.Message, 1)
			if err := b.Handle("envelope", rtTopic, func(_ context.Context, m *message.Message) error {
				roundTrip <- m
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			handled := make(chan handledEvent, 2)
			if err := b.Handle("billing", ordersTopic, handlers.Event(v3Reg, func(ctx context.Context, ev e2eOrderV3) error {
				env, _ := schema.EnvelopeFromContext(ctx)
				handled <- handledEvent{ev, env}
				return nil
			})); err != nil {
				t.Fatal(err)
			}
			deadLetters := make(chan *message.Message, 2)
			if err := b.Handle("deadletters", cfg.DeadLetterTopic, func(_ context.Context, m *message.Message) error {
				deadLetters <- m
				return nil
			}); err != nil {
				t.Fatal(err)
			}

			var raw <-chan amqp091.Delivery
			if cfg.Broker == bus.BrokerAMQP {
				raw = e2eRawAMQP(t, cfg, rtTopic, "raw")
			}

			// Publish everything before Run: Handle prepared the topics.
			ctx := bustest.Context(t, e2eWait)
			sent, err := v3Reg.NewMessage(ctx, e2eOrderV3{OrderID: "o-rt", AmountCents: 995, Currency: "CHF"},
				schema.WithSubject("o-rt"),
				schema.WithTime(time.Date(2026, 3, 4, 5, 6, 7, 123456789, time.UTC)),
				schema.WithCorrelationID("corr-rt"),
				schema.WithCausationID("cause-rt"),
				schema.WithPartitionKey("customer-7"),
				schema.WithExtension("tenant", "acme"),
			)
			if err != nil {
				t.Fatal(err)
			}
			want, _, err := schema.FromMessage(sent)
			if err != nil {
				t.Fatal(err)
			}
			if want.DataSchema == "" || want.DataContentType == "" {
				t.Fatalf("test envelope lacks attributes: %+v", want)
			}
			wantPayload := bytes.Clone(sent.Payload)
			if err := b.Publish(ctx, rtTopic, sent); err != nil {
				t.Fatal(err)
			}
			if err := handlers.Publish(ctx, b, v1Reg, ordersTopic, e2eOrderV1{ID: "o-1", Amount: 12.5},
				schema.WithCorrelationID("corr-v1")); err != nil {
				t.Fatal(err)
			}
			v4Msg, err := v4Reg.NewMessage(ctx, e2eOrderV4{OrderID: "o-4", Total: "9.99 EUR"})
			if err != nil {
				t.Fatal(err)
			}
			v4Payload := bytes.Clone(v4Msg.Payload)
			if err := b.Publish(ctx, ordersTopic, v4Msg); err != nil {
				t.Fatal(err)
			}

			stop := e2eRun(t, b)
			defer stop()

			// Round trip.
			got := e2eReceive(t, "round-trip message", roundTrip)
			env, data, err := schema.FromMessage(got)
			if err != nil {
				t.Fatal(err)
			}
			if !env.Time.Equal(want.Time) {
				t.Errorf("time %v, want %v", env.Time, want.Time)
			}
			env.Time, want.Time = time.Time{}, time.Time{}
			if !reflect.DeepEqual(env, want) {
				t.Errorf("envelope after the broker\n got %+v\nwant %+v", env, want)
			}
			if got.UUID != want.ID || !bytes.Equal(data, wantPayload) {
				t.Errorf("UUID %q payload %q, want %q %q", got.UUID, data, want.ID, wantPayload)
			}
			if raw != nil {
				e2eCheckAMQPWire(t, e2eReceive(t, "raw AMQP delivery", raw), want)
			}

			// v1 producer, v3 consumer.
			h := e2eReceive(t, "handled v1 event", handled)
			if wantEv := (e2eOrderV3{OrderID: "o-1", AmountCents: 1250, Currency: "EUR"}); h.ev != wantEv {
				t.Errorf("v3 handler got %+v, want %+v", h.ev, wantEv)
			}
			if h.env.DataVersion != 1 || h.env.Source != "/legacy-orders" || h.env.CorrelationID != "corr-v1" {
				t.Errorf("v1 event's envelope %+v", h.env)
			}

			// v4 to the v3 consumer: dead-lettered, never handled.
			check := func(who string, dl *message.Message) {
				t.Helper()
				if r := dl.Metadata.Get(middleware.KeyDLQReason); r != schema.CodeVersionUnknown {
					t.Errorf("%s: %s = %q, want %q", who, middleware.KeyDLQReason, r, schema.CodeVersionUnknown)
				}
				if !bytes.Equal(dl.Payload, v4Payload) {
					t.Errorf("%s: payload %q, want byte-identical %q", who, dl.Payload, v4Payload)
				}
				if dl.UUID != v4Msg.UUID || dl.Metadata.Get(schema.KeyDataVersion) != "4" ||
					dl.Metadata.Get(middleware.KeyDLQTopic) != ordersTopic ||
					dl.Metadata.Get(middleware.KeyDLQHandler) != "billing" {
					t.Errorf("%s: dead letter %s %v", who, dl.UUID, dl.Metadata)
				}
			}
			check("dead-letter handler", e2eReceive(t, "dead letter", deadLetters))
			if dlqGroup != nil {
				dl := e2eReceive(t, "dead letter for group "+bus.DeadLetterGroup, dlqGroup)
				dl.Ack()
				check("group "+bus.DeadLetterGroup, dl)
			}
			select {
			case h := <-handled:
				t.Errorf("v3 handler got a second event: %+v", h)
			default:
			}
		})
	}
}

// e2eRawAMQP binds a queue of group to topic (through a broker client of its
// own, like the bus does) and consumes it with plain amqp091-go.
func e2eRawAMQP(t *testing.T, cfg bus.Config, topic, group string) <-chan amqp091.Delivery {
	t.Helper()
	a, err := amqp.New(cfg.AMQP, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if err := a.Prepare(bustest.Context(t, e2eWait), topic, group); err != nil {
		t.Fatal(err)
	}
	conn, err := amqp091.Dial(cfg.AMQP.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	d, err := ch.Consume(amqp.QueueName(topic, group), "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// e2eCheckAMQPWire checks the CloudEvents AMQP binding on the wire:
// cloudEvents_ headers for every attribute, content_type property.
func e2eCheckAMQPWire(t *testing.T, d amqp091.Delivery, want schema.Envelope) {
	t.Helper()
	if d.ContentType != want.DataContentType {
		t.Errorf("content_type property %q, want %q", d.ContentType, want.DataContentType)
	}
	for k, v := range map[string]string{
		"cloudEvents_id":            want.ID,
		"cloudEvents_source":        want.Source,
		"cloudEvents_specversion":   schema.SpecVersion,
		"cloudEvents_type":          want.Type,
		"cloudEvents_time":          "2026-03-04T05:06:07.123456789Z",
		"cloudEvents_subject":       want.Subject,
		"cloudEvents_dataschema":    want.DataSchema,
		"cloudEvents_dataversion":   "3",
		"cloudEvents_correlationid": want.CorrelationID,
		"cloudEvents_causationid":   want.CausationID,
		"cloudEvents_partitionkey":  want.PartitionKey,
		"cloudEvents_tenant":        "acme",
	} {
		if d.Headers[k] != v {
			t.Errorf("header %s = %#v, want %q", k, d.Headers[k], v)
		}
	}
	for _, k := range []string{"content-type", "ce_id", "ce_type"} {
		if _, ok := d.Headers[k]; ok {
			t.Errorf("header %s on the wire: %v", k, d.Headers)
		}
	}
}

// e2eCleanupAMQP deletes the test's exchanges and queues when it ends.
func e2eCleanupAMQP(t *testing.T, cfg bus.Config, topics, groups []string) {
	t.Cleanup(func() {
		var queues, exchanges []string
		for _, topic := range topics {
			for _, group := range groups {
				queues = append(queues, amqp.QueueName(topic, group))
			}
			exchanges = append(exchanges, amqp.ExchangeName(topic))
		}
		testserver.DeleteAMQP(t, cfg.AMQP.URL, queues, exchanges)
	})
}

// A handlers.Batcher registered with the bus on Kafka with several
// partitions gets real batches (up to one message per partition is in flight
// at once) and handles every event exactly once.
func TestBatcherOnKafka(t *testing.T) {
	t.Parallel()
	const n, size, partitions = 40, 8, 4
	cfg := bus.Config{
		Broker:          bus.BrokerKafka,
		Kafka:           kafka.Config{Brokers: testserver.Kafka(t, partitions), Partitions: partitions},
		Group:           bustest.Name("e2e-batch"),
		DeadLetterTopic: bustest.Name("e2e-batch-dlq"),
	}
	b, err := bus.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	v1Reg, v3Reg, _ := e2eRegistries(t)
	var (
		mu      sync.Mutex
		seen    = map[string]int{}
		largest int
	)
	all := make(chan struct{})
	batcher := handlers.Batch(v3Reg, handlers.BatchConfig{Size: size, MaxWait: 20 * time.Millisecond},
		func(_ context.Context, batch []handlers.Item[e2eOrderV3]) error {
			mu.Lock()
			defer mu.Unlock()
			largest = max(largest, len(batch))
			for _, it := range batch {
				seen[it.Event.OrderID]++
			}
			if len(seen) == n {
				close(all)
			}
			return nil
		})
	topic := bustest.Name("e2e-batch-orders")
	if err := b.Handle("batch", topic, batcher.Handle); err != nil {
		t.Fatal(err)
	}
	ctx := bustest.Context(t, e2eWait)
	for i := range n {
		id := fmt.Sprint("o-", i)
		if err := handlers.Publish(ctx, b, v1Reg, topic, e2eOrderV1{ID: id, Amount: 1}, schema.WithPartitionKey(id)); err != nil {
			t.Fatal(err)
		}
	}
	stop := e2eRun(t, b)
	select {
	case <-all:
	case <-ctx.Done():
		mu.Lock()
		t.Fatalf("handled %d of %d events", len(seen), n)
	}
	stop()
	mu.Lock()
	defer mu.Unlock()
	for id, k := range seen {
		if k != 1 {
			t.Errorf("%s handled %d times", id, k)
		}
	}
	if largest > size {
		t.Errorf("batch of %d, Size %d", largest, size)
	}
	t.Logf("largest batch: %d (Size %d, %d partitions)", largest, size, partitions)
}
