package bus_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/internal/testserver"
	"github.com/busline/busline/middleware"
)

// A graceful shutdown does not wait for a message the open circuit breaker
// holds: Close returns without error long before the open period (an hour)
// ends, the held message is neither handled nor dead-lettered, and where
// messages outlive the bus a new bus on the same group gets it. Without
// the shutdown ending the breaker's wait, Close would run into its 30s
// deadline and report the drain interrupted.
func TestShutdownDoesNotWaitForAnOpenBreaker(t *testing.T) {
	brokers := shutdownBrokers(t)
	addrs := testserver.Kafka(t, 1)
	brokers = append(brokers, shutdownBroker{
		name: "kafka",
		cfg: func(topic string) bus.Config {
			return bus.Config{Broker: bus.BrokerKafka, Group: topic, DeadLetterTopic: topic + ".dlq",
				Kafka: kafka.Config{Brokers: addrs, Partitions: 1}}
		},
		restart: func() {},
	})
	for _, tc := range brokers {
		t.Run(tc.name, func(t *testing.T) {
			topic := bustest.Name("shutdown-breaker")
			cfg := tc.cfg(topic)
			cfg.RedeliveryDelays = bus.NoRedelivery
			obs := &shutdownObserver{opened: make(chan struct{}), deadLettered: map[string]bool{}}
			store := &claimSignal{MemoryStore: middleware.NewMemoryStore(middleware.MemoryStoreConfig{}), held: make(chan struct{})}
			b, err := bus.New(cfg, bus.WithStack(func(c *middleware.StackConfig) {
				c.Retry = middleware.RetryConfig{MaxAttempts: 1}
				c.Breaker = middleware.BreakerConfig{ConsecutiveFailures: 1, OpenTimeout: time.Hour}
				c.Dedup.Store = store
				c.Observer = obs
			}))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close(context.Background()) })
			var mu sync.Mutex
			handled := map[string]int{}
			if err := b.Handle("h", topic, func(ctx context.Context, m *message.Message) error {
				mu.Lock()
				handled[m.UUID]++
				mu.Unlock()
				if m.UUID == "opens" {
					return errors.New("downstream down")
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			runErr := startBus(b)
			ctx := bustest.Context(t, 30*time.Second)
			if err := b.Publish(ctx, topic, message.NewMessage("opens", nil)); err != nil {
				t.Fatal(err)
			}
			select {
			case <-obs.opened:
			case <-ctx.Done():
				t.Fatal("the breaker did not open")
			}
			if err := b.Publish(ctx, topic, message.NewMessage("held", nil)); err != nil {
				t.Fatal(err)
			}
			select {
			case <-store.held: // past dedup, on its way into the open breaker
			case <-ctx.Done():
				t.Fatal("the second message was not delivered")
			}
			if err := b.Close(ctx); err != nil {
				t.Fatalf("Close = %v, want nil: the shutdown waited for the open breaker", err)
			}
			if err := <-runErr; err != nil {
				t.Fatalf("Run = %v", err)
			}
			mu.Lock()
			n := handled["held"]
			mu.Unlock()
			obs.mu.Lock()
			dl := obs.deadLettered["held"]
			obs.mu.Unlock()
			if n != 0 || dl {
				t.Fatalf("the held message was handled %d times, dead-lettered %v; want neither", n, dl)
			}
			if tc.restart == nil {
				return
			}
			// It comes back to the group's next consumer.
			_, got := nextConsumer(t, cfg, topic)
			for {
				select {
				case id := <-got:
					if id == "held" {
						return
					}
				case <-ctx.Done():
					t.Fatal("the held message was not delivered again after the restart")
				}
			}
		})
	}
}

// shutdownObserver reports the breaker opening and records dead letters.
type shutdownObserver struct {
	middleware.NopObserver
	once         sync.Once
	opened       chan struct{}
	mu           sync.Mutex
	deadLettered map[string]bool
}

func (o *shutdownObserver) BreakerChanged(i middleware.BreakerInfo) {
	if i.To == middleware.BreakerOpen {
		o.once.Do(func() { close(o.opened) })
	}
}

func (o *shutdownObserver) DeadLettered(i middleware.DeadLetterInfo) {
	o.mu.Lock()
	o.deadLettered[i.Message.UUID] = true
	o.mu.Unlock()
}

// claimSignal is an in-memory dedup store that reports the first claim of
// the message "held".
type claimSignal struct {
	*middleware.MemoryStore
	once sync.Once
	held chan struct{}
}

func (s *claimSignal) Claim(ctx context.Context, key, owner string, lease time.Duration) (middleware.ClaimState, error) {
	st, err := s.MemoryStore.Claim(ctx, key, owner, lease)
	if strings.HasSuffix(key, "held") {
		s.once.Do(func() { close(s.held) })
	}
	return st, err
}
