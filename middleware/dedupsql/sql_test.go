package dedupsql_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/busline/busline/middleware"
	"github.com/busline/busline/middleware/dedupsql"
	"github.com/busline/busline/middleware/deduptest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// dsns are tried in order; BUSLINE_TEST_POSTGRES_DSN overrides them.
var dsns = []string{
	"postgres://postgres@127.0.0.1:5432/test?sslmode=disable",
	"postgres://root@127.0.0.1:5432/test?sslmode=disable",
}

// pool connects to the local PostgreSQL, skipping the test when it is
// unreachable, unless CI is set: CI must never skip silently.
func pool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	list := dsns
	if d := os.Getenv("BUSLINE_TEST_POSTGRES_DSN"); d != "" {
		list = []string{d}
	}
	var lastErr error
	for _, dsn := range list {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		p, err := pgxpool.New(ctx, dsn)
		if err == nil {
			if err = p.Ping(ctx); err != nil {
				p.Close()
			}
		}
		cancel()
		if err == nil {
			t.Cleanup(p.Close)
			return p
		}
		lastErr = err
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("postgres unreachable and CI is set: %v", lastErr)
	}
	t.Skipf("postgres at 127.0.0.1:5432 unreachable (start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start): %v", lastErr)
	return nil
}

// store returns a migrated store on a table unique to this test run,
// dropped at the end.
func store(t *testing.T, p *pgxpool.Pool) *dedupsql.Store {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	table := "busline_dedup_test_" + hex.EncodeToString(b[:])
	s := dedupsql.New(p, dedupsql.Config{Table: table})
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatalf("second migrate: %v", err)
	}
	t.Cleanup(func() { _, _ = p.Exec(context.Background(), "DROP TABLE IF EXISTS "+table) })
	return s
}

func TestStoreConformance(t *testing.T) {
	s := store(t, pool(t))
	deduptest.Run(t, func(*testing.T) middleware.DedupStore { return s })
}

func TestPurge(t *testing.T) {
	s := store(t, pool(t))
	ctx := context.Background()
	if _, err := s.Claim(ctx, "a", "o", time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Claim(ctx, "b", "o", time.Hour); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // the database clock decides expiry
	n, err := s.Purge(ctx)
	if err != nil || n != 1 {
		t.Errorf("purged %d, %v; want 1", n, err)
	}
}

// Concurrent duplicates across two consumers never run at the same time, a
// failure releases the claim so the redelivery is processed, and the
// message has exactly one effect.
func TestDedupConcurrentConsumers(t *testing.T) {
	s := store(t, pool(t))
	var running, maxRunning, effects, calls atomic.Int32
	handler := func(*message.Message) ([]*message.Message, error) {
		n := running.Add(1)
		defer running.Add(-1)
		if n > maxRunning.Load() {
			maxRunning.Store(n)
		}
		if calls.Add(1) == 1 {
			return nil, middleware.Permanent(errFirst)
		}
		time.Sleep(20 * time.Millisecond) // work; overlaps the other consumer's attempts
		effects.Add(1)
		return nil, nil
	}
	consumers := []message.HandlerFunc{
		middleware.Dedup(middleware.DedupConfig{Store: s, Namespace: "orders"})(handler),
		middleware.Dedup(middleware.DedupConfig{Store: s, Namespace: "orders"})(handler),
	}
	// Each consumer redelivers until its copy is acked (nil error).
	var wg sync.WaitGroup
	for _, h := range consumers {
		wg.Go(func() {
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				m := message.NewMessage("id-1", nil)
				m.SetContext(context.Background())
				if _, err := h(m); err == nil {
					return
				}
				time.Sleep(time.Millisecond) // nack delay
			}
			t.Error("never acked")
		})
	}
	wg.Wait()
	if maxRunning.Load() != 1 || effects.Load() != 1 {
		t.Errorf("max running %d, effects %d; want 1 and 1", maxRunning.Load(), effects.Load())
	}
}

var errFirst = &first{}

type first struct{}

func (*first) Error() string { return "first attempt fails" }

func TestNewPanicsOnBadTable(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("no panic")
		}
	}()
	dedupsql.New(&pgxpool.Pool{}, dedupsql.Config{Table: "x; DROP TABLE y"})
}
