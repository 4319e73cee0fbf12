package middleware_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/middleware"
)

func TestDedupAcksDuplicatesWithoutEffect(t *testing.T) {
	var hits []middleware.DedupInfo
	effects := 0
	h := middleware.Dedup(middleware.DedupConfig{
		Observer: observer{duplicate: func(i middleware.DedupInfo) { hits = append(hits, i) }},
	})(func(*message.Message) ([]*message.Message, error) {
		effects++
		return []*message.Message{message.NewMessage("out", nil)}, nil
	})
	if out, err := h(newMsg("u1", "same")); err != nil || len(out) != 1 {
		t.Fatalf("first: %v, %v", out, err)
	}
	out, err := h(newMsg("u1", "same"))
	if err != nil || out != nil {
		t.Fatalf("duplicate: %v, %v; want nil, nil", out, err)
	}
	// Equal payload, different id: not a duplicate (unlike Watermill's hash key).
	if _, err := h(newMsg("u2", "same")); err != nil {
		t.Fatal(err)
	}
	if effects != 2 {
		t.Errorf("%d effects, want 2", effects)
	}
	if len(hits) != 1 || hits[0].State != middleware.AlreadyDone || hits[0].Key != "u1" {
		t.Errorf("hits %+v", hits)
	}
}

func TestDedupFailureReleasesTheClaim(t *testing.T) {
	calls := 0
	h := middleware.Dedup(middleware.DedupConfig{})(func(*message.Message) ([]*message.Message, error) {
		calls++
		if calls == 1 {
			return nil, errTransient
		}
		return nil, nil
	})
	if _, err := h(newMsg("u1", "")); !errors.Is(err, errTransient) {
		t.Fatalf("err = %v", err)
	}
	// The redelivery (or a replay from the dead-letter topic) is processed.
	if _, err := h(newMsg("u1", "")); err != nil {
		t.Fatal(err)
	}
	if calls != 2 {
		t.Fatalf("%d calls, want 2", calls)
	}
	// Now it is done.
	if _, err := h(newMsg("u1", "")); err != nil || calls != 2 {
		t.Fatalf("%d calls, err %v", calls, err)
	}
}

// The Watermill bug in DESIGN.md: Retry outside Deduplicator made the retry
// look like a duplicate: 1 call, 0 effects, no error. Here: 2 calls, 1 effect.
func TestDedupWithRetryOutsideHasExactlyOneEffect(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		calls, effects := 0, 0
		handler := func(*message.Message) ([]*message.Message, error) {
			calls++
			if calls == 1 {
				return nil, errTransient
			}
			effects++
			return nil, nil
		}
		h := middleware.Retry(middleware.RetryConfig{})(middleware.Dedup(middleware.DedupConfig{})(handler))
		if _, err := h(newMsg("u1", "")); err != nil {
			t.Fatal(err)
		}
		if _, err := h(newMsg("u1", "")); err != nil { // a broker duplicate
			t.Fatal(err)
		}
		if calls != 2 || effects != 1 {
			t.Errorf("%d calls, %d effects; want 2 calls, 1 effect", calls, effects)
		}
	})
}

func TestDedupConcurrentDuplicatesDoNotRunTogether(t *testing.T) {
	for name, store := range map[string]middleware.DedupStore{
		"private":   nil,
		"shared":    middleware.NewMemoryStore(middleware.MemoryStoreConfig{}),
		"interface": storeOnly{middleware.NewMemoryStore(middleware.MemoryStoreConfig{})},
	} {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var running, maxRunning, effects, waits, dups atomic.Int32
				release := make(chan struct{})
				h := middleware.Dedup(middleware.DedupConfig{
					Store: store,
					Observer: observer{
						dedupWaited: func(middleware.DedupInfo) { waits.Add(1) },
						duplicate:   func(middleware.DedupInfo) { dups.Add(1) },
					},
				})(func(*message.Message) ([]*message.Message, error) {
					n := running.Add(1)
					if n > maxRunning.Load() {
						maxRunning.Store(n)
					}
					<-release
					running.Add(-1)
					effects.Add(1)
					return nil, nil
				})
				const n = 8
				errs := make([]error, n)
				var wg sync.WaitGroup
				for i := range n {
					wg.Go(func() { _, errs[i] = h(newMsg("same", "")) })
				}
				synctest.Wait()
				// The duplicates wait (one DedupWaited each) for the first to end.
				if waits.Load() != n-1 {
					t.Errorf("%d waits, want %d", waits.Load(), n-1)
				}
				close(release)
				wg.Wait()
				for _, err := range errs {
					if err != nil {
						t.Errorf("err %v", err)
					}
				}
				if maxRunning.Load() != 1 || effects.Load() != 1 || dups.Load() != n-1 {
					t.Errorf("max running %d, effects %d, duplicates %d", maxRunning.Load(), effects.Load(), dups.Load())
				}
			})
		})
	}
}

// storeOnly hides a store's concrete type, so that [middleware.Dedup]
// takes the path of shared stores (heartbeat included).
type storeOnly struct{ middleware.DedupStore }

// A message whose claim was left by a crashed owner waits, without error
// and with one DedupWaited, until the lease runs out, then is processed.
func TestDedupWaitsForACrashedOwnersLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := storeOnly{middleware.NewMemoryStore(middleware.MemoryStoreConfig{})}
		const lease = 3 * time.Second
		if st, _ := store.Claim(context.Background(), "ns/u1", "crashed", lease); st != middleware.Claimed {
			t.Fatal(st)
		}
		start := time.Now()
		waits, calls := 0, 0
		h := middleware.Dedup(middleware.DedupConfig{
			Store: store, Namespace: "ns", Lease: lease,
			Observer: observer{dedupWaited: func(middleware.DedupInfo) { waits++ }},
		})(func(*message.Message) ([]*message.Message, error) {
			calls++
			return nil, nil
		})
		if _, err := h(newMsg("u1", "")); err != nil {
			t.Fatal(err)
		}
		waited := time.Since(start)
		if calls != 1 || waits != 1 || waited < lease || waited > lease+time.Second {
			t.Errorf("%d calls, %d waits, waited %v; want 1, 1, a little over %v", calls, waits, waited, lease)
		}
	})
}

// A live handler that runs for many leases keeps its claim: the heartbeat
// renews it, so a concurrent delivery of the same key waits all along.
func TestDedupHeartbeatKeepsASlowHandlersClaim(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := storeOnly{middleware.NewMemoryStore(middleware.MemoryStoreConfig{})}
		const lease = 300 * time.Millisecond
		var storeErrs []error
		var running, maxRunning atomic.Int32
		h := middleware.Dedup(middleware.DedupConfig{
			Store: store, Namespace: "ns", Lease: lease,
			Observer: observer{storeFailed: func(i middleware.DedupInfo) { storeErrs = append(storeErrs, i.Err) }},
		})(func(*message.Message) ([]*message.Message, error) {
			if n := running.Add(1); n > maxRunning.Load() {
				maxRunning.Store(n)
			}
			time.Sleep(10 * lease)
			running.Add(-1)
			return nil, nil
		})
		var wg sync.WaitGroup
		wg.Go(func() {
			if _, err := h(newMsg("u1", "")); err != nil {
				t.Error(err)
			}
		})
		time.Sleep(5 * lease)
		if st, _ := store.Claim(context.Background(), "ns/u1", "other", lease); st != middleware.InProgress {
			t.Errorf("claim after 5 leases of a running handler = %v, want in-progress", st)
		}
		wg.Go(func() {
			if _, err := h(newMsg("u1", "")); err != nil {
				t.Error(err)
			}
		})
		wg.Wait()
		if maxRunning.Load() != 1 || len(storeErrs) != 0 {
			t.Errorf("max running %d, store errors %v", maxRunning.Load(), storeErrs)
		}
	})
}

// A renewal that finds its claim taken reports ErrClaimLost once.
func TestDedupReportsALostClaim(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := storeOnly{middleware.NewMemoryStore(middleware.MemoryStoreConfig{})}
		var infos []middleware.DedupInfo
		h := middleware.Dedup(middleware.DedupConfig{
			Store: store, Namespace: "ns", Lease: time.Second,
			Observer: observer{storeFailed: func(i middleware.DedupInfo) { infos = append(infos, i) }},
		})(func(*message.Message) ([]*message.Message, error) {
			// Another owner takes the claim over (as after a long pause).
			if err := store.Commit(context.Background(), "ns/u1", time.Hour); err != nil {
				t.Error(err)
			}
			time.Sleep(3 * time.Second)
			return nil, nil
		})
		if _, err := h(newMsg("u1", "")); err != nil {
			t.Fatal(err)
		}
		if len(infos) != 1 || infos[0].Op != "renew" || !errors.Is(infos[0].Err, middleware.ErrClaimLost) {
			t.Errorf("store errors %+v, want one renew ErrClaimLost", infos)
		}
	})
}

// A wait ends with the message's context: a redelivery error, never run.
func TestDedupWaitEndsWithTheContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := middleware.NewMemoryStore(middleware.MemoryStoreConfig{})
		if st, _ := store.Claim(context.Background(), "ns/u1", "other", time.Hour); st != middleware.Claimed {
			t.Fatal(st)
		}
		calls := 0
		h := middleware.Dedup(middleware.DedupConfig{Store: store, Namespace: "ns"})(func(*message.Message) ([]*message.Message, error) {
			calls++
			return nil, nil
		})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		msg := newMsg("u1", "")
		msg.SetContext(ctx)
		_, err := h(msg)
		if calls != 0 || !errors.Is(err, middleware.ErrInProgress) || !errors.Is(err, context.DeadlineExceeded) || !middleware.IsRedelivery(err) {
			t.Errorf("calls %d, err %v; want no call and a redelivery ErrInProgress", calls, err)
		}
	})
}

type failingStore struct{ middleware.DedupStore }

func (failingStore) Claim(context.Context, string, string, time.Duration) (middleware.ClaimState, error) {
	return 0, errors.New("store down")
}

func TestDedupStoreErrorFailsClosed(t *testing.T) {
	calls := 0
	h := middleware.Dedup(middleware.DedupConfig{Store: failingStore{}})(func(*message.Message) ([]*message.Message, error) {
		calls++
		return nil, nil
	})
	_, err := h(newMsg("u1", ""))
	var se *middleware.DedupStoreError
	if !errors.As(err, &se) || !middleware.IsRedelivery(err) || calls != 0 {
		t.Errorf("err %v, calls %d; want a redelivery DedupStoreError and no call", err, calls)
	}
}

func TestDedupKeyErrorIsPermanent(t *testing.T) {
	h := middleware.Dedup(middleware.DedupConfig{
		Key: func(m *message.Message) (string, error) { return m.Metadata.Get("order_id"), nil },
	})(ok)
	_, err := h(newMsg("u1", ""))
	if !middleware.IsPermanent(err) || middleware.ErrorType(err) != middleware.ReasonDedupKey {
		t.Errorf("err %v (type %q); want permanent %s", err, middleware.ErrorType(err), middleware.ReasonDedupKey)
	}
}

func TestDedupSharedStoreIsNamespacedPerHandler(t *testing.T) {
	store := middleware.NewMemoryStore(middleware.MemoryStoreConfig{})
	var keys []string
	mw := middleware.Dedup(middleware.DedupConfig{
		Store:    store,
		Observer: observer{duplicate: func(i middleware.DedupInfo) { keys = append(keys, i.Key) }},
	})
	calls := 0
	count := func(*message.Message) ([]*message.Message, error) { calls++; return nil, nil }
	a, b := mw(count), middleware.Dedup(middleware.DedupConfig{Store: store, Namespace: "handler-b"})(count)
	for range 2 {
		if _, err := a(newMsg("u1", "")); err != nil {
			t.Fatal(err)
		}
		if _, err := b(newMsg("u1", "")); err != nil {
			t.Fatal(err)
		}
	}
	if calls != 2 {
		t.Errorf("%d calls, want 2 (once per handler)", calls)
	}
	if len(keys) != 1 || keys[0] != "u1" {
		t.Errorf("duplicate keys %v", keys)
	}
}

// A panic that escapes the stack (its recover step off) must not leave the
// in-memory claim held: the redelivery is processed at once.
func TestDedupPanicReleasesTheMemoryClaim(t *testing.T) {
	for name, mw := range map[string]message.HandlerMiddleware{
		"dedup": middleware.Dedup(middleware.DedupConfig{}),
		"stack": middleware.Stack(middleware.StackConfig{Disable: middleware.StepRecover | middleware.StepRetry}),
	} {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				calls := 0
				h := mw(func(*message.Message) ([]*message.Message, error) {
					calls++
					if calls == 1 {
						panic("boom")
					}
					return nil, nil
				})
				func() {
					defer func() { _ = recover() }()
					_, _ = h(newMsg("u1", ""))
				}()
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				msg := newMsg("u1", "")
				msg.SetContext(ctx)
				if _, err := h(msg); err != nil || calls != 2 {
					t.Errorf("redelivery after a panic: %v, %d calls; want processed", err, calls)
				}
			})
		})
	}
}
