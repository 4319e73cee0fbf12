// Package deduptest is a conformance test for implementations of
// [middleware.DedupStore], run against the in-memory store and against the
// Redis and PostgreSQL stores on real servers.
package deduptest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"sync"
	"testing"
	"time"

	"github.com/busline/busline/middleware"
)

// Run runs the conformance tests as subtests of t. newStore returns the
// store under test; the tests use fresh random keys, so one store may serve
// every subtest, but it must see the real clock: lease and TTL expiry are
// checked with short real waits (about a second in all).
func Run(t *testing.T, newStore func(t *testing.T) middleware.DedupStore) {
	t.Helper()
	ctx := context.Background()
	const long = time.Minute

	t.Run("ClaimCommitDuplicate", func(t *testing.T) {
		s, key := newStore(t), Key(t)
		mustState(t, s, key, "a", long, middleware.Claimed)
		mustState(t, s, key, "b", long, middleware.InProgress)
		if err := s.Commit(ctx, key, long); err != nil {
			t.Fatal(err)
		}
		mustState(t, s, key, "c", long, middleware.AlreadyDone)
		// Release of a done key, by its old owner or another, is a no-op.
		if err := s.Release(ctx, key, "a"); err != nil {
			t.Fatal(err)
		}
		mustState(t, s, key, "c", long, middleware.AlreadyDone)
	})

	t.Run("ReleaseLetsTheNextClaimWin", func(t *testing.T) {
		s, key := newStore(t), Key(t)
		mustState(t, s, key, "a", long, middleware.Claimed)
		if err := s.Release(ctx, key, "not-the-owner"); err != nil {
			t.Fatal(err)
		}
		mustState(t, s, key, "b", long, middleware.InProgress)
		if err := s.Release(ctx, key, "a"); err != nil {
			t.Fatal(err)
		}
		mustState(t, s, key, "b", long, middleware.Claimed)
		if err := s.Release(ctx, Key(t), "nobody"); err != nil {
			t.Errorf("release of a missing key: %v", err)
		}
	})

	t.Run("LeaseExpires", func(t *testing.T) {
		s, key := newStore(t), Key(t)
		mustState(t, s, key, "crashed", 100*time.Millisecond, middleware.Claimed)
		mustState(t, s, key, "b", long, middleware.InProgress)
		time.Sleep(150 * time.Millisecond) // the server's clock decides expiry
		mustState(t, s, key, "b", long, middleware.Claimed)
		// The old owner's late release must not drop the new claim.
		if err := s.Release(ctx, key, "crashed"); err != nil {
			t.Fatal(err)
		}
		mustState(t, s, key, "c", long, middleware.InProgress)
	})

	t.Run("RenewKeepsTheClaim", func(t *testing.T) {
		s, key := newStore(t), Key(t)
		const lease = 150 * time.Millisecond
		mustState(t, s, key, "a", lease, middleware.Claimed)
		for range 3 { // 300 ms in all: twice the lease
			time.Sleep(lease / 3)
			mustRenew(t, s, key, "a", lease, true)
			time.Sleep(lease / 3)
		}
		mustState(t, s, key, "b", long, middleware.InProgress)
		mustRenew(t, s, key, "b", lease, false) // not b's claim
		// Without renewals the claim expires and another owner takes it;
		// its old owner's renewal then fails.
		time.Sleep(lease + 50*time.Millisecond)
		mustState(t, s, key, "b", long, middleware.Claimed)
		mustRenew(t, s, key, "a", lease, false)
		if err := s.Commit(ctx, key, long); err != nil {
			t.Fatal(err)
		}
		mustRenew(t, s, key, "b", lease, false) // done
		mustState(t, s, key, "c", long, middleware.AlreadyDone)
	})

	t.Run("DoneExpiresAfterTTL", func(t *testing.T) {
		s, key := newStore(t), Key(t)
		mustState(t, s, key, "a", long, middleware.Claimed)
		if err := s.Commit(ctx, key, 100*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		mustState(t, s, key, "b", long, middleware.AlreadyDone)
		time.Sleep(150 * time.Millisecond)
		mustState(t, s, key, "b", long, middleware.Claimed)
	})

	t.Run("CommitWithoutClaim", func(t *testing.T) {
		s, key := newStore(t), Key(t)
		if err := s.Commit(ctx, key, long); err != nil {
			t.Fatal(err)
		}
		mustState(t, s, key, "a", long, middleware.AlreadyDone)
	})

	t.Run("ConcurrentClaimsHaveOneWinner", func(t *testing.T) {
		s, key := newStore(t), Key(t)
		const n = 16
		var wg sync.WaitGroup
		states := make([]middleware.ClaimState, n)
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() {
				states[i], errs[i] = s.Claim(ctx, key, "owner-"+string(rune('a'+i)), long)
			})
		}
		wg.Wait()
		claimed := 0
		for i := range n {
			if errs[i] != nil {
				t.Fatal(errs[i])
			}
			if states[i] == middleware.Claimed {
				claimed++
			} else if states[i] != middleware.InProgress {
				t.Errorf("state %v", states[i])
			}
		}
		if claimed != 1 {
			t.Errorf("%d claims won, want 1", claimed)
		}
	})

	t.Run("CancelledContext", func(t *testing.T) {
		s, key := newStore(t), Key(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		// A store may ignore the context (in memory) or fail; it must not
		// report a claim it did not record.
		st, err := s.Claim(cctx, key, "a", long)
		if err == nil && st != middleware.Claimed {
			t.Errorf("state %v with no error", st)
		}
	})
}

// Key returns a fresh random key for t.
func Key(t *testing.T) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "deduptest/" + t.Name() + "/" + hex.EncodeToString(b[:])
}

func mustState(t *testing.T, s middleware.DedupStore, key, owner string, lease time.Duration, want middleware.ClaimState) {
	t.Helper()
	got, err := s.Claim(context.Background(), key, owner, lease)
	if err != nil {
		t.Fatalf("Claim(%q, %q): %v", key, owner, err)
	}
	if got != want {
		t.Fatalf("Claim(%q, %q) = %v, want %v", key, owner, got, want)
	}
}

func mustRenew(t *testing.T, s middleware.DedupStore, key, owner string, lease time.Duration, want bool) {
	t.Helper()
	got, err := s.Renew(context.Background(), key, owner, lease)
	if err != nil {
		t.Fatalf("Renew(%q, %q): %v", key, owner, err)
	}
	if got != want {
		t.Fatalf("Renew(%q, %q) = %v, want %v", key, owner, got, want)
	}
}
