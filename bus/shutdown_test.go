package bus_test

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/internal/testserver"
)

// A handler in the middle of a message when Close is called finishes with a
// live context, its message is acked, and a new bus on the same queue does
// not see it again.
func TestShutdownFinishesMessageInFlight(t *testing.T) {
	for _, tc := range shutdownBrokers(t) {
		t.Run(tc.name, func(t *testing.T) {
			topic := bustest.Name("shutdown-finish")
			cfg := tc.cfg(topic)
			b := mustNew(t, cfg)
			started := make(chan struct{})
			release := make(chan struct{})
			finished := make(chan error, 1)
			if err := b.Handle("h", topic, func(ctx context.Context, m *message.Message) error {
				if m.UUID != "first" {
					return nil
				}
				close(started)
				<-release
				finished <- ctx.Err()
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			runErr := startBus(b)
			if err := b.Publish(context.Background(), topic, message.NewMessage("first", nil)); err != nil {
				t.Fatal(err)
			}
			<-started
			closeErr := make(chan error, 1)
			go func() { closeErr <- b.Close(bustest.Context(t, 30*time.Second)) }()
			// Close has begun once publishing is refused; the handler is
			// still in its message.
			for !errors.Is(b.Publish(context.Background(), topic, message.NewMessage("late", nil)), bus.ErrClosed) {
				select {
				case err := <-closeErr:
					t.Fatalf("Close returned %v while a handler was in flight", err)
				default:
				}
			}
			close(release)
			if err := <-finished; err != nil {
				t.Fatalf("handler context was cancelled during the drain: %v", err)
			}
			if err := <-closeErr; err != nil {
				t.Fatalf("Close = %v", err)
			}
			if err := <-runErr; err != nil {
				t.Fatalf("Run = %v", err)
			}
			if tc.restart == nil {
				return
			}
			// A new bus on the same queue gets the next message, not the
			// finished one again.
			b2, got := nextConsumer(t, cfg, topic)
			if err := b2.Publish(context.Background(), topic, message.NewMessage("marker", nil)); err != nil {
				t.Fatal(err)
			}
			// Messages published while Close began ("late") may come first;
			// the finished one must not come at all.
			for id := range got {
				if id == "first" {
					t.Fatal("after restart the finished message was delivered again")
				}
				if id == "marker" {
					break
				}
			}
		})
	}
}

// A handler still running when the shutdown deadline passes is cancelled;
// its message is nacked and delivered again after a restart.
func TestShutdownDeadlineRedeliversInterrupted(t *testing.T) {
	url := testserver.AMQPURL(t)
	topic := bustest.Name("shutdown-deadline")
	cfg := amqpShutdownConfig(url, topic)
	t.Cleanup(func() { deleteQueues(t, url, topic, cfg) })
	b := mustNew(t, cfg)
	started := make(chan struct{})
	cancelled := make(chan error, 1)
	if err := b.Handle("h", topic, func(ctx context.Context, m *message.Message) error {
		close(started)
		<-ctx.Done() // a handler that does not finish in time
		cancelled <- ctx.Err()
		return ctx.Err()
	}); err != nil {
		t.Fatal(err)
	}
	go b.Run(context.Background())
	<-b.Running()
	if err := b.Publish(context.Background(), topic, message.NewMessage("slow", []byte("p"))); err != nil {
		t.Fatal(err)
	}
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := b.Close(ctx); err == nil {
		t.Fatal("Close = nil, want the deadline reported")
	}
	if err := <-cancelled; err == nil {
		t.Fatal("handler context was not cancelled at the deadline")
	}

	b2 := mustNew(t, cfg)
	got := make(chan *message.Message, 1)
	if err := b2.Handle("h", topic, func(ctx context.Context, m *message.Message) error {
		got <- m
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	go b2.Run(context.Background())
	defer b2.Close(context.Background())
	select {
	case m := <-got:
		if m.UUID != "slow" || string(m.Payload) != "p" {
			t.Fatalf("redelivered %s %q", m.UUID, m.Payload)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the interrupted message was not delivered again after restart")
	}
}

type shutdownBroker struct {
	name    string
	cfg     func(topic string) bus.Config
	restart func() // non-nil where messages outlive the bus
}

func shutdownBrokers(t *testing.T) []shutdownBroker {
	brokers := []shutdownBroker{{name: "memory", cfg: func(string) bus.Config { return bus.Config{} }}}
	if url := testserver.AMQPURL(t); url != "" {
		brokers = append(brokers, shutdownBroker{
			name: "amqp",
			cfg: func(topic string) bus.Config {
				cfg := amqpShutdownConfig(url, topic)
				t.Cleanup(func() { deleteQueues(t, url, topic, cfg) })
				return cfg
			},
			restart: func() {},
		})
	}
	return brokers
}

func amqpShutdownConfig(url, topic string) bus.Config {
	return bus.Config{
		Broker:          bus.BrokerAMQP,
		Group:           topic,
		DeadLetterTopic: topic + ".dlq",
		AMQP:            amqp.Config{URL: url},
	}
}

// startBus runs b and waits until it is running; Run's result comes on the
// channel returned.
func startBus(b *bus.Bus) <-chan error {
	runErr := make(chan error, 1)
	go func() { runErr <- b.Run(context.Background()) }()
	<-b.Running()
	return runErr
}

// nextConsumer runs a new bus on cfg, the group's next consumer, whose
// handler "h" of topic reports the id of every message it gets; the bus is
// closed when the test ends.
func nextConsumer(t *testing.T, cfg bus.Config, topic string) (*bus.Bus, <-chan string) {
	t.Helper()
	b := mustNew(t, cfg)
	got := make(chan string, 100)
	if err := b.Handle("h", topic, func(ctx context.Context, m *message.Message) error {
		got <- m.UUID
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	go b.Run(context.Background())
	return b, got
}

func mustNew(t *testing.T, cfg bus.Config) *bus.Bus {
	t.Helper()
	b, err := bus.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(context.Background()) })
	return b
}

// deleteQueues removes what a test bus declared on RabbitMQ for the handler
// "h" of topic: its queue and exchange, and the dead-letter ones.
func deleteQueues(t *testing.T, url, topic string, cfg bus.Config) {
	deleteAMQP(t, cfg, map[string]string{topic: "h"})
}

// deleteAMQP removes what a test bus with cfg declared on RabbitMQ: for
// each topic its exchange and the queue of its handler (handlers maps topic
// to handler name), and the dead-letter topic's. It does nothing for other
// brokers.
func deleteAMQP(t *testing.T, cfg bus.Config, handlers map[string]string) {
	if cfg.Broker != bus.BrokerAMQP {
		return
	}
	group := cfg.Group
	if group == "" {
		group = bus.DefaultGroup
	}
	dlq := cfg.DeadLetterTopic
	if dlq == "" {
		dlq = bus.DefaultDeadLetterTopic
	}
	var queues, exchanges []string
	for topic, handler := range handlers {
		queues = append(queues, amqp.QueueName(topic, group+"."+handler))
		exchanges = append(exchanges, amqp.ExchangeName(topic))
	}
	if dlq != bus.DefaultDeadLetterTopic {
		queues = append(queues, amqp.QueueName(dlq, bus.DeadLetterGroup))
		exchanges = append(exchanges, amqp.ExchangeName(dlq))
	}
	testserver.DeleteAMQP(t, cfg.AMQP.URL, queues, exchanges)
}

// A handler still running when Close begins publishes what its work
// produces: Publish with its ctx goes through during the drain (before the
// fix it returned ErrClosed, and the message was retried and then
// dead-lettered), while a publish from outside any handler is refused.
func TestShutdownHandlerPublishesWhileDraining(t *testing.T) {
	for _, tc := range shutdownBrokers(t) {
		t.Run(tc.name, func(t *testing.T) {
			topic := bustest.Name("shutdown-publish")
			b := mustNew(t, tc.cfg(topic))
			started := make(chan struct{})
			release := make(chan struct{})
			published := make(chan error, 1)
			if err := b.Handle("h", topic, func(ctx context.Context, m *message.Message) error {
				if m.UUID != "first" {
					return nil
				}
				close(started)
				<-release
				err := b.Publish(ctx, topic, message.NewMessage("effect", nil))
				published <- err
				return err
			}); err != nil {
				t.Fatal(err)
			}
			runErr := startBus(b)
			if err := b.Publish(context.Background(), topic, message.NewMessage("first", nil)); err != nil {
				t.Fatal(err)
			}
			<-started
			closeErr := make(chan error, 1)
			go func() { closeErr <- b.Close(bustest.Context(t, 30*time.Second)) }()
			// Close has begun once the bus reports it (asked without
			// publishing: test publishes would fill the handler's queue).
			for !errors.Is(b.Health(context.Background()), bus.ErrClosed) {
				runtime.Gosched()
			}
			if err := b.Publish(context.Background(), topic, message.NewMessage("late", nil)); !errors.Is(err, bus.ErrClosed) {
				t.Errorf("Publish from outside a handler during the drain = %v, want ErrClosed", err)
			}
			close(release)
			if err := <-published; err != nil {
				t.Errorf("the draining handler's Publish = %v", err)
			}
			if err := <-closeErr; err != nil {
				t.Errorf("Close = %v", err)
			}
			if err := <-runErr; err != nil {
				t.Errorf("Run = %v", err)
			}
		})
	}
}
