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
