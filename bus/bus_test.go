package bus_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/schema"
)

func TestPublishHandleClose(t *testing.T) {
	b, err := bus.New(bus.Config{})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *message.Message, 10)
	if err := b.Handle("h", "orders", func(ctx context.Context, m *message.Message) error {
		got <- m
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Published before Run: kept for the handler.
	if err := b.Publish(context.Background(), "orders", message.NewMessage("m1", []byte("x"))); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- b.Run(ctx) }()
	<-b.Running()
	m := <-got
	if m.UUID != "m1" || string(m.Payload) != "x" {
		t.Fatalf("got %s %q", m.UUID, m.Payload)
	}
	if m.Metadata.Get(schema.KeyID) != "m1" || m.Metadata.Get(schema.KeyCorrelationID) != "m1" {
		t.Fatalf("metadata %v: want ce_id and correlation id m1", m.Metadata)
	}
	cancel()
	if err := <-runErr; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if err := b.Publish(context.Background(), "orders", message.NewMessage("m2", nil)); !errors.Is(err, bus.ErrClosed) {
		t.Fatalf("Publish after close = %v, want ErrClosed", err)
	}
}

func TestNewReportsEveryProblem(t *testing.T) {
	_, err := bus.New(bus.Config{Broker: "kafka", ShutdownTimeout: -1, Kafka: kafkaCfgBad()})
	if err == nil {
		t.Fatal("New accepted a bad config")
	}
	for _, want := range []string{"no brokers", "initial offset", "shutdown timeout"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if _, err := bus.New(bus.Config{Broker: "nats"}); err == nil || !strings.Contains(err.Error(), "nats") {
		t.Errorf("unknown broker: %v", err)
	}
}

func TestConfigFromEnv(t *testing.T) {
	t.Setenv("BUSLINE_BROKER", "Kafka")
	t.Setenv("BUSLINE_KAFKA_BROKERS", "a:9092, b:9092")
	t.Setenv("BUSLINE_KAFKA_SASL_MECHANISM", "PLAIN")
	t.Setenv("BUSLINE_KAFKA_SASL_USER", "u")
	t.Setenv("BUSLINE_SHUTDOWN_TIMEOUT", "5s")
	t.Setenv("BUSLINE_AMQP_PREFETCH", "7")
	t.Setenv("BUSLINE_KAFKA_PARTITIONER", "sarama")
	c, err := bus.ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if c.Broker != "kafka" || len(c.Kafka.Brokers) != 2 || c.Kafka.Brokers[1] != "b:9092" ||
		c.ShutdownTimeout != 5*time.Second || c.AMQP.Prefetch != 7 || c.Kafka.SASL.User != "u" ||
		c.Kafka.Partitioner != kafka.PartitionerSarama {
		t.Fatalf("config %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	t.Setenv("BUSLINE_SHUTDOWN_TIMEOUT", "soon")
	t.Setenv("BUSLINE_MEMORY_BUFFER", "big")
	_, err = bus.ConfigFromEnv()
	if err == nil || !strings.Contains(err.Error(), "BUSLINE_SHUTDOWN_TIMEOUT") || !strings.Contains(err.Error(), "BUSLINE_MEMORY_BUFFER") {
		t.Fatalf("malformed env: %v", err)
	}
}

func TestHandleErrors(t *testing.T) {
	b, err := bus.New(bus.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	h := func(context.Context, *message.Message) error { return nil }
	if err := b.Handle("h", "t", h); err != nil {
		t.Fatal(err)
	}
	if err := b.Handle("h", "t2", h); err == nil {
		t.Error("duplicate handler name accepted")
	}
	if err := b.Handle("", "t", h); err == nil {
		t.Error("empty name accepted")
	}
	_ = fmt.Sprint()
}

func TestDeadLetterAndReplay(t *testing.T) {
	b, err := bus.New(bus.Config{})
	if err != nil {
		t.Fatal(err)
	}
	fail := make(chan bool, 2)
	fail <- true
	done := make(chan string, 1)
	if err := b.Handle("h", "orders", func(ctx context.Context, m *message.Message) error {
		if <-fail {
			return bus.Permanent(errors.New("bad order"))
		}
		done <- m.UUID
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- b.Run(ctx) }()
	<-b.Running()
	if err := b.Publish(ctx, "orders", message.NewMessage("o1", []byte(`{"n":1}`))); err != nil {
		t.Fatal(err)
	}
	dls, err := b.DeadLetters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dl := <-dls
	if dl.UUID != "o1" || string(dl.Payload) != `{"n":1}` {
		t.Fatalf("dead letter %s %q", dl.UUID, dl.Payload)
	}
	if r := dl.Metadata.Get("busline_dlq_reason"); r != "permanent" {
		t.Errorf("reason = %q, want permanent", r)
	}
	if tp := dl.Metadata.Get("busline_dlq_topic"); tp != "orders" {
		t.Errorf("dlq topic = %q", tp)
	}
	fail <- false
	topic, err := b.Replay(ctx, dl)
	if err != nil || topic != "orders" {
		t.Fatalf("Replay = %q, %v", topic, err)
	}
	dl.Ack()
	if id := <-done; id != "o1" {
		t.Fatalf("replayed %s", id)
	}
	cancel()
	if err := <-runErr; err != nil {
		t.Fatal(err)
	}
}

// The delayed tier's settings are read from the environment and checked at
// New with the other problems: bad delays, and a RabbitMQ max queue length
// on classic queues with the tier on.
func TestDelayedRetryConfig(t *testing.T) {
	t.Setenv("BUSLINE_REDELIVERY_DELAYS", "2s, 30s")
	t.Setenv("BUSLINE_REDELIVERY_MAX_TOTAL", "1h")
	t.Setenv("BUSLINE_AMQP_QUEUE_TYPE", "Quorum")
	t.Setenv("BUSLINE_AMQP_MAX_QUEUE_LENGTH", "100")
	c, err := bus.ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.RedeliveryDelays, []time.Duration{2 * time.Second, 30 * time.Second}) || c.RedeliveryMaxTotal != time.Hour ||
		c.AMQP.QueueType != "quorum" || c.AMQP.MaxQueueLength != 100 {
		t.Fatalf("config %+v", c)
	}
	t.Setenv("BUSLINE_REDELIVERY_DELAYS", "none")
	if c, err = bus.ConfigFromEnv(); err != nil || c.RedeliveryDelays == nil || len(c.RedeliveryDelays) != 0 {
		t.Fatalf("none: %v %v", c.RedeliveryDelays, err)
	}
	t.Setenv("BUSLINE_REDELIVERY_DELAYS", "1s,soon")
	if _, err = bus.ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), "BUSLINE_REDELIVERY_DELAYS") {
		t.Fatalf("malformed delays: %v", err)
	}

	_, err = bus.New(bus.Config{Broker: bus.BrokerAMQP, RedeliveryDelays: []time.Duration{time.Second, -time.Second, time.Second},
		AMQP: amqp.Config{URL: "amqp://127.0.0.1:1/", MaxQueueLength: 10}})
	for _, want := range []string{"not a positive", "given twice", "quorum"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New: %v, want it to mention %q", err, want)
		}
	}
}
