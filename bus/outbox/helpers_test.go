package outbox_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/bus/outbox"
	"github.com/busline/busline/internal/testserver"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild())
	}
	goleak.VerifyTestMain(m)
}

// pool connects to the local PostgreSQL; bustest skips the test when it is
// unreachable, or fails it when CI is set.
func pool(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	dsn := testserver.PostgresDSN(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pc, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		tb.Fatal(err)
	}
	pc.MaxConns = 32 // writers holding transactions open, relays, the listener
	p, err := pgxpool.NewWithConfig(ctx, pc)
	if err == nil {
		err = p.Ping(ctx)
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatalf("postgres: %v", err)
		}
		tb.Skipf("postgres at %s unusable: %v", dsn, err)
	}
	tb.Cleanup(p.Close)
	return p
}

// tables returns outbox and inbox table names unique to this test, dropped
// at its end.
func tables(tb testing.TB, p *pgxpool.Pool) (string, string) {
	tb.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	s := hex.EncodeToString(b[:])
	ob, ib := "busline_outbox_t"+s, "busline_inbox_t"+s
	tb.Cleanup(func() {
		_, _ = p.Exec(context.Background(), "DROP TABLE IF EXISTS "+ob+", "+ib)
	})
	return ob, ib
}

// newOutbox returns a migrated outbox on fresh tables unless cfg names
// them.
func newOutbox(tb testing.TB, b *bus.Bus, p *pgxpool.Pool, cfg outbox.Config) *outbox.Outbox {
	tb.Helper()
	if cfg.Table == "" {
		cfg.Table, cfg.InboxTable = tables(tb, p)
	}
	o, err := outbox.New(b, p, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := o.Migrate(context.Background()); err != nil {
		tb.Fatal(err)
	}
	return o
}

var quiet = bus.WithLogger(slog.New(slog.DiscardHandler))

// memoryBus returns a bus on the in-process broker, closed at the end.
func memoryBus(tb testing.TB) *bus.Bus {
	tb.Helper()
	b, err := bus.New(bus.Config{}, quiet)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = b.Close(context.Background()) })
	return b
}

// kafkaBus returns a bus on the Kafka cluster at addrs, closed at the end.
func kafkaBus(tb testing.TB, addrs []string) *bus.Bus {
	tb.Helper()
	b, err := bus.New(bus.Config{Broker: bus.BrokerKafka, Kafka: kafka.Config{Brokers: addrs}}, quiet)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = b.Close(context.Background()) })
	return b
}

// run runs b until the test ends, and waits for it to be running.
func run(tb testing.TB, b *bus.Bus) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, bus.ErrClosed) {
			tb.Errorf("bus run: %v", err)
		}
	})
	select {
	case <-b.Running():
	case err := <-done:
		tb.Fatalf("bus stopped: %v", err)
	}
}

// collect registers a handler on topic that sends each message to the
// returned channel.
func collect(tb testing.TB, b *bus.Bus, topic string) <-chan *message.Message {
	tb.Helper()
	ch := make(chan *message.Message, 1024)
	err := b.Handle(bustest.Name("collect"), topic, func(ctx context.Context, m *message.Message) error {
		ch <- m.Copy()
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return ch
}

// receive waits for one message on ch.
func receive(tb testing.TB, ch <-chan *message.Message) *message.Message {
	tb.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(20 * time.Second):
		tb.Fatal("no message within 20s")
		return nil
	}
}

// record is one Kafka record as read back.
type record struct {
	key, id string
	value   string
	part    int32
}

// readKafka reads topic from its start until n records arrived (or the
// context ends), with a plain franz-go consumer.
func readKafka(tb testing.TB, ctx context.Context, addrs []string, topic string, n int) []record {
	tb.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		tb.Fatal(err)
	}
	defer cl.Close()
	var out []record
	for len(out) < n {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			tb.Fatalf("read %d of %d records of %s: %v", len(out), n, topic, ctx.Err())
		}
		fs.EachRecord(func(r *kgo.Record) {
			rec := record{key: string(r.Key), value: string(r.Value), part: r.Partition}
			for _, h := range r.Headers {
				if h.Key == "ce_id" {
					rec.id = string(h.Value)
				}
			}
			out = append(out, rec)
		})
	}
	return out
}

// waitRelayed returns an OnRelayed hook and a function that waits until
// the hook counted at least n messages.
func waitRelayed() (func(outbox.RelayedInfo), func(tb testing.TB, n int)) {
	var mu sync.Mutex
	total := 0
	changed := make(chan struct{}, 1)
	hook := func(i outbox.RelayedInfo) {
		mu.Lock()
		total += i.Messages
		mu.Unlock()
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	wait := func(tb testing.TB, n int) {
		tb.Helper()
		deadline := time.After(60 * time.Second)
		for {
			mu.Lock()
			t := total
			mu.Unlock()
			if t >= n {
				return
			}
			select {
			case <-changed:
			case <-deadline:
				tb.Fatalf("relayed %d of %d messages within 60s", t, n)
			}
		}
	}
	return hook, wait
}
