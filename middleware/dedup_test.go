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
		OnDuplicate: func(i middleware.DedupInfo) { hits = append(hits, i) },
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
	synctest.Test(t, func(t *testing.T) {
		var running, maxRunning, effects atomic.Int32
		release := make(chan struct{})
		h := middleware.Dedup(middleware.DedupConfig{})(func(*message.Message) ([]*message.Message, error) {
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
		close(release)
		wg.Wait()
		inProgress := 0
		for _, err := range errs {
			switch {
			case err == nil:
			case errors.Is(err, middleware.ErrInProgress):
				if !middleware.IsRedelivery(err) {
					t.Error("ErrInProgress is not a redelivery error")
				}
				inProgress++
			default:
				t.Errorf("err %v", err)
			}
		}
		if maxRunning.Load() != 1 || effects.Load() != 1 || inProgress != n-1 {
			t.Errorf("max running %d, effects %d, in progress %d", maxRunning.Load(), effects.Load(), inProgress)
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
		Store:       store,
		OnDuplicate: func(i middleware.DedupInfo) { keys = append(keys, i.Key) },
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
