package middleware_test

import (
	"context"
	"math"
	"strconv"
	"testing"
	"testing/synctest"
	"time"

	"github.com/busline/busline/middleware"
	"github.com/busline/busline/middleware/deduptest"
)

func TestMemoryStoreConformance(t *testing.T) {
	deduptest.Run(t, func(*testing.T) middleware.DedupStore {
		return middleware.NewMemoryStore(middleware.MemoryStoreConfig{})
	})
}

func TestMemoryStoreIsBoundedBySize(t *testing.T) {
	ctx := context.Background()
	s := middleware.NewMemoryStore(middleware.MemoryStoreConfig{MaxEntries: 3})
	for i := range 10 {
		k := strconv.Itoa(i)
		if st, _ := s.Claim(ctx, k, "o", time.Hour); st != middleware.Claimed {
			t.Fatalf("claim %s: %v", k, st)
		}
		_ = s.Commit(ctx, k, time.Hour)
	}
	if n := s.Len(); n != 3 {
		t.Errorf("Len = %d, want 3", n)
	}
	// The newest keys are kept, the oldest forgotten.
	if st, _ := s.Claim(ctx, "9", "o", time.Hour); st != middleware.AlreadyDone {
		t.Errorf("newest key: %v", st)
	}
	if st, _ := s.Claim(ctx, "0", "o", time.Hour); st != middleware.Claimed {
		t.Errorf("oldest key: %v", st)
	}
}

// A large store is split into shards, each a ring of its share: it keeps
// MaxEntries keys in all, the newest of them, and forgets old ones.
func TestMemoryStoreShardsKeepTheNewestKeys(t *testing.T) {
	ctx := context.Background()
	const max, n = 4100, 10_000 // 16 shards of 256 or 257; each gets about 625 keys
	s := middleware.NewMemoryStore(middleware.MemoryStoreConfig{MaxEntries: max})
	for i := range n {
		k := "key-" + strconv.Itoa(i)
		if st, _ := s.Claim(ctx, k, "o", time.Hour); st != middleware.Claimed {
			t.Fatalf("claim %s: %v", k, st)
		}
		_ = s.Commit(ctx, k, time.Hour)
	}
	if got := s.Len(); got != max {
		t.Errorf("Len = %d, want %d", got, max)
	}
	// Of the last 1,000 keys a shard gets about 62, far below its 256.
	for i := n - 1000; i < n; i++ {
		if st, _ := s.Claim(ctx, "key-"+strconv.Itoa(i), "p", time.Hour); st != middleware.AlreadyDone {
			t.Fatalf("key-%d, among the newest: %v, want AlreadyDone", i, st)
		}
	}
	if st, _ := s.Claim(ctx, "key-0", "p", time.Hour); st != middleware.Claimed {
		t.Errorf("key-0, the oldest: %v, want Claimed (forgotten)", st)
	}
}

func TestMemoryStoreExpiresLazily(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		s := middleware.NewMemoryStore(middleware.MemoryStoreConfig{})
		_, _ = s.Claim(ctx, "k", "a", time.Minute)
		time.Sleep(time.Minute - time.Nanosecond)
		if st, _ := s.Claim(ctx, "k", "b", time.Minute); st != middleware.InProgress {
			t.Errorf("before lease end: %v", st)
		}
		time.Sleep(time.Nanosecond)
		if st, _ := s.Claim(ctx, "k", "b", time.Minute); st != middleware.Claimed {
			t.Errorf("at lease end: %v", st)
		}
	})
}

// A lease or TTL too long to add to the clock (math.MaxInt64) never
// expires, instead of expiring at once.
func TestMemoryStoreForEver(t *testing.T) {
	ctx := context.Background()
	s := middleware.NewMemoryStore(middleware.MemoryStoreConfig{})
	if st, _ := s.Claim(ctx, "k", "o", math.MaxInt64); st != middleware.Claimed {
		t.Fatal(st)
	}
	if st, _ := s.Claim(ctx, "k", "p", time.Minute); st != middleware.InProgress {
		t.Errorf("second Claim under an endless lease = %v, want InProgress", st)
	}
	if err := s.Commit(ctx, "k", math.MaxInt64); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.Claim(ctx, "k", "p", time.Minute); st != middleware.AlreadyDone {
		t.Errorf("Claim after an endless TTL = %v, want AlreadyDone", st)
	}
}
