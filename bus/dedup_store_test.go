package bus_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/internal/testserver"
	"github.com/busline/busline/middleware"
	"github.com/busline/busline/middleware/dedupredis"
	"github.com/busline/busline/middleware/dedupsql"
)

// With a shared dedup store (Redis, PostgreSQL) behind the bus: a message
// that failed for good is dead-lettered with its claim released, so its
// replay from the dead-letter topic is processed, not swallowed as a
// duplicate; a second copy after that is a duplicate, acked without effect.
func TestDedupStoreReplayFromDeadLetter(t *testing.T) {
	stores := map[string]func(t *testing.T) middleware.DedupStore{
		"redis": func(t *testing.T) middleware.DedupStore {
			c := redis.NewClient(&redis.Options{Addr: testserver.RedisAddr(t)})
			t.Cleanup(func() { c.Close() })
			prefix := bustest.Name("busline-test-dedup") + ":"
			t.Cleanup(func() {
				ctx := context.Background()
				keys, _ := c.Keys(ctx, prefix+"*").Result()
				if len(keys) > 0 {
					c.Del(ctx, keys...)
				}
			})
			return dedupredis.New(c, dedupredis.Config{Prefix: prefix})
		},
		"postgres": func(t *testing.T) middleware.DedupStore {
			p, err := pgxpool.New(context.Background(), testserver.PostgresDSN(t))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(p.Close)
			table := "busline_dedup_bus_test_" + time.Now().Format("150405") + "_" + bustest.Name("t")[len("t-"):]
			table = sanitize(table)
			s := dedupsql.New(p, dedupsql.Config{Table: table})
			if err := s.Migrate(context.Background()); err != nil {
				t.Fatalf("migrate (is PostgreSQL's database test reachable as postgres?): %v", err)
			}
			t.Cleanup(func() { p.Exec(context.Background(), "DROP TABLE IF EXISTS "+table) })
			return s
		},
	}
	for name, newStore := range stores {
		t.Run(name, func(t *testing.T) {
			store := newStore(t)
			b, err := bus.New(bus.Config{}, bus.WithStack(func(c *middleware.StackConfig) {
				c.Dedup.Store = store
			}))
			if err != nil {
				t.Fatal(err)
			}
			fail := make(chan bool, 1)
			fail <- true
			effects := make(chan string, 4)
			duplicates := make(chan string, 4)
			err = b.Handle("billing", "orders", func(ctx context.Context, m *message.Message) error {
				if f := <-fail; f {
					fail <- false
					return bus.Permanent(errors.New("card declined"))
				}
				fail <- false
				effects <- m.UUID
				return nil
			}, bus.HandlerStack(func(c *middleware.StackConfig) {
				c.Dedup.Observer = duplicateObserver{uuids: duplicates}
			}))
			if err != nil {
				t.Fatal(err)
			}
			ctx := bustest.Context(t, 30*time.Second)
			go b.Run(ctx)
			defer b.Close(context.Background())
			<-b.Running()

			if err := b.Publish(ctx, "orders", message.NewMessage("order-7", []byte("{}"))); err != nil {
				t.Fatal(err)
			}
			dls, err := b.DeadLetters(ctx)
			if err != nil {
				t.Fatal(err)
			}
			dl := <-dls
			if dl.UUID != "order-7" || dl.Metadata.Get(middleware.KeyDLQReason) != middleware.ReasonPermanent {
				t.Fatalf("dead letter %s, reason %q", dl.UUID, dl.Metadata.Get(middleware.KeyDLQReason))
			}
			if _, err := b.Replay(ctx, dl); err != nil {
				t.Fatal(err)
			}
			dl.Ack()
			select {
			case id := <-effects:
				if id != "order-7" {
					t.Fatalf("effect of %s", id)
				}
			case id := <-duplicates:
				t.Fatalf("the replay of %s was swallowed as a duplicate", id)
			case <-ctx.Done():
				t.Fatal("the replay was not processed")
			}
			// Another copy is now a duplicate: no second effect.
			if err := b.Publish(ctx, "orders", message.NewMessage("order-7", []byte("{}"))); err != nil {
				t.Fatal(err)
			}
			select {
			case id := <-duplicates:
				if id != "order-7" {
					t.Fatalf("duplicate %s", id)
				}
			case id := <-effects:
				t.Fatalf("second effect of %s", id)
			case <-ctx.Done():
				t.Fatal("the second copy was neither processed nor seen as a duplicate")
			}
		})
	}
}

func sanitize(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' {
			out = append(out, c)
		} else {
			out = append(out, '_')
		}
	}
	return string(out)
}

// duplicateObserver sends the UUID of every duplicate the dedup step skips.
type duplicateObserver struct {
	middleware.NopObserver
	uuids chan<- string
}

func (o duplicateObserver) Duplicate(i middleware.DedupInfo) { o.uuids <- i.Message.UUID }
