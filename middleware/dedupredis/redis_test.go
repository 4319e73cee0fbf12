package dedupredis_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/busline/busline/middleware"
	"github.com/busline/busline/middleware/dedupredis"
	"github.com/busline/busline/middleware/deduptest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const addr = "127.0.0.1:6379"

// client connects to the local Redis, skipping the test when it is
// unreachable, unless CI is set: CI must never skip silently.
func client(t *testing.T) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		_ = c.Close()
		if os.Getenv("CI") != "" {
			t.Fatalf("redis at %s unreachable and CI is set: %v", addr, err)
		}
		t.Skipf("redis at %s unreachable (start it with: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no): %v", addr, err)
	}
	return c
}

// prefix is a key prefix unique to this test run; its keys are deleted at
// the end.
func prefix(t *testing.T, c *redis.Client) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	p := "busline-test:" + hex.EncodeToString(b[:]) + ":"
	t.Cleanup(func() {
		ctx := context.Background()
		iter := c.Scan(ctx, 0, p+"*", 100).Iterator()
		for iter.Next(ctx) {
			c.Del(ctx, iter.Val())
		}
	})
	return p
}

func TestStoreConformance(t *testing.T) {
	c := client(t)
	defer c.Close()
	p := prefix(t, c)
	deduptest.Run(t, func(*testing.T) middleware.DedupStore {
		return dedupredis.New(c, dedupredis.Config{Prefix: p})
	})
}

// Two consumers (processes) share the store: a failure releases the claim,
// so the redelivery on the other consumer is processed, and a later
// duplicate is acked with no effect.
func TestDedupAcrossConsumers(t *testing.T) {
	c := client(t)
	defer c.Close()
	store := dedupredis.New(c, dedupredis.Config{Prefix: prefix(t, c)})
	effects := 0
	fail := true
	handler := func(*message.Message) ([]*message.Message, error) {
		if fail {
			fail = false
			return nil, middleware.Permanent(errBoom)
		}
		effects++
		return nil, nil
	}
	consumerA := middleware.Dedup(middleware.DedupConfig{Store: store, Namespace: "orders"})(handler)
	consumerB := middleware.Dedup(middleware.DedupConfig{Store: store, Namespace: "orders"})(handler)
	msg := func() *message.Message {
		m := message.NewMessage("id-1", nil)
		m.SetContext(context.Background())
		return m
	}
	if _, err := consumerA(msg()); err == nil {
		t.Fatal("want the handler's error")
	}
	if _, err := consumerB(msg()); err != nil {
		t.Fatal(err)
	}
	if _, err := consumerA(msg()); err != nil {
		t.Fatal(err)
	}
	if effects != 1 {
		t.Errorf("%d effects, want 1", effects)
	}
}

var errBoom = &boom{}

type boom struct{}

func (*boom) Error() string { return "boom" }
