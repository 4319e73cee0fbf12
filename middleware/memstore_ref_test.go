package middleware

import (
	"context"
	"hash/maphash"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"
)

// refStore is MemoryStore as it was with a Go map index: the reference
// TestMemoryStoreMatchesReference compares the open-addressing index with.
type refStore struct {
	max int

	mu    sync.Mutex
	index map[string]int
	ring  []refEntry
	next  int
}

type refEntry struct {
	key     string
	owner   string
	token   uint64
	done    bool
	expires time.Time
}

func newRefStore(cfg MemoryStoreConfig) *refStore {
	if cfg.MaxEntries < 0 {
		panic("middleware: MemoryStoreConfig.MaxEntries must not be negative")
	}
	if cfg.MaxEntries == 0 {
		cfg.MaxEntries = DefaultMemoryStoreMaxEntries
	}
	return &refStore{max: cfg.MaxEntries, index: make(map[string]int)}
}

func (s *refStore) Claim(_ context.Context, key, owner string, lease time.Duration) (ClaimState, error) {
	st, _ := s.claim(key, owner, 0, lease)
	return st, nil
}

func (s *refStore) Commit(_ context.Context, key string, ttl time.Duration) error {
	s.commit(key, -1, ttl)
	return nil
}

func (s *refStore) Release(_ context.Context, key, owner string) error {
	s.release(key, -1, owner, 0)
	return nil
}

func (s *refStore) claim(key, owner string, token uint64, lease time.Duration) (ClaimState, int) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if i, ok := s.index[key]; ok {
		e := &s.ring[i]
		if now.Before(e.expires) {
			if e.done {
				return AlreadyDone, i
			}
			return InProgress, i
		}
		e.owner, e.token, e.done, e.expires = owner, token, false, now.Add(lease)
		return Claimed, i
	}
	return Claimed, s.insert(refEntry{key: key, owner: owner, token: token, expires: now.Add(lease)})
}

func (s *refStore) commit(key string, slot int, ttl time.Duration) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if slot < 0 || s.ring[slot].key != key {
		var ok bool
		if slot, ok = s.index[key]; !ok {
			s.insert(refEntry{key: key, done: true, expires: now.Add(ttl)})
			return
		}
	}
	e := &s.ring[slot]
	e.owner, e.token, e.done, e.expires = "", 0, true, now.Add(ttl)
}

func (s *refStore) release(key string, slot int, owner string, token uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if slot < 0 || s.ring[slot].key != key {
		var ok bool
		if slot, ok = s.index[key]; !ok {
			return
		}
	}
	e := &s.ring[slot]
	if !e.done && e.owner == owner && e.token == token {
		delete(s.index, key)
		*e = refEntry{}
	}
}

func (s *refStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.index)
}

func (s *refStore) insert(e refEntry) int {
	if len(s.ring) < s.max {
		s.index[e.key] = len(s.ring)
		s.ring = append(s.ring, e)
		return len(s.ring) - 1
	}
	i := s.next
	s.next = (s.next + 1) % s.max
	if old := s.ring[i].key; old != "" {
		delete(s.index, old)
	}
	s.ring[i] = e
	s.index[e.key] = i
	return i
}

func TestMemoryStoreMatchesReference(t *testing.T) {
	ctx := context.Background()
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 1))
		maxEntries := 1 + rng.IntN(80)
		s := NewMemoryStore(MemoryStoreConfig{MaxEntries: maxEntries})
		r := newRefStore(MemoryStoreConfig{MaxEntries: maxEntries})
		type held struct {
			key   string
			slot  int
			token uint64
		}
		var claims []held
		for step := range 5000 {
			key := strconv.Itoa(rng.IntN(3 * maxEntries))
			lease := time.Hour
			if rng.IntN(10) == 0 {
				lease = -time.Hour // expired at once
			}
			switch op := rng.IntN(6); op {
			case 0, 1: // Claim by a string owner
				owner := "o" + strconv.Itoa(rng.IntN(3))
				a, _ := s.Claim(ctx, key, owner, lease)
				b, _ := r.Claim(ctx, key, owner, lease)
				if a != b {
					t.Fatalf("seed %d step %d: Claim(%s) = %v, reference %v", seed, step, key, a, b)
				}
			case 2: // the Dedup fast path: token claim, kept for commit or release
				tok := uint64(step + 1)
				a, slot := s.claim(key, "", tok, monoNow(), lease)
				b, _ := r.claim(key, "", tok, lease)
				if a != b {
					t.Fatalf("seed %d step %d: claim(%s) = %v, reference %v", seed, step, key, a, b)
				}
				if a == Claimed {
					claims = append(claims, held{key, slot, tok})
				}
			case 3:
				_ = s.Commit(ctx, key, lease)
				_ = r.Commit(ctx, key, lease)
			case 4:
				owner := "o" + strconv.Itoa(rng.IntN(3))
				_ = s.Release(ctx, key, owner)
				_ = r.Release(ctx, key, owner)
			case 5: // finish a fast-path claim
				if len(claims) == 0 {
					continue
				}
				c := claims[0]
				claims = claims[1:]
				if rng.IntN(2) == 0 {
					s.commit(c.key, c.slot, time.Hour)
					r.commit(c.key, -1, time.Hour)
				} else {
					s.release(c.key, c.slot, "", c.token)
					r.release(c.key, -1, "", c.token)
				}
			}
			if a, b := s.Len(), r.Len(); a != b {
				t.Fatalf("seed %d step %d: Len = %d, reference %d", seed, step, a, b)
			}
		}
	}
}

// A key whose index entry shares the tag (the low 32 hash bits) of another
// key is told apart by the ring entry: planting such an entry on the probe
// path of a new key neither finds the wrong key nor hides the new one.
func TestMemoryStoreTagCollision(t *testing.T) {
	s := NewMemoryStore(MemoryStoreConfig{MaxEntries: 8})
	if st, _ := s.Claim(context.Background(), "a", "o", time.Minute); st != Claimed {
		t.Fatal(st)
	}
	ha := maphash.String(s.seed, "a")
	_, slotA := s.find("a", ha)
	hb := maphash.String(s.seed, "b")
	mask := uint64(len(s.index) - 1)
	p := hb & mask
	// Plant, at b's home, an entry with b's tag that points at a's slot
	// (a's own entry stays where it is).
	for s.index[p] != 0 {
		p = (p + 1) & mask
	}
	s.index[p] = newIdx(hb, slotA)
	if pos, slot := s.find("b", hb); slot >= 0 || pos == int(p) {
		t.Fatalf("find(b) = %d, %d: took a's entry for b's", pos, slot)
	}
	if pos, slot := s.find("a", ha); slot != slotA {
		t.Fatalf("find(a) = %d, %d, want slot %d", pos, slot, slotA)
	}
	s.index[p] = 0
	// Unplanted again: both keys behave.
	if st, _ := s.Claim(context.Background(), "b", "o", time.Minute); st != Claimed {
		t.Errorf("Claim(b) = %v", st)
	}
	if st, _ := s.Claim(context.Background(), "a", "o", time.Minute); st != InProgress {
		t.Errorf("Claim(a) = %v", st)
	}
}

// A lease or TTL too long to add to the clock (math.MaxInt64) never
// expires, instead of expiring at once.
func TestMemoryStoreForEver(t *testing.T) {
	ctx := context.Background()
	s := NewMemoryStore(MemoryStoreConfig{})
	if st, _ := s.Claim(ctx, "k", "o", math.MaxInt64); st != Claimed {
		t.Fatal(st)
	}
	if st, _ := s.Claim(ctx, "k", "p", time.Minute); st != InProgress {
		t.Errorf("second Claim under an endless lease = %v, want InProgress", st)
	}
	if err := s.Commit(ctx, "k", math.MaxInt64); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.Claim(ctx, "k", "p", time.Minute); st != AlreadyDone {
		t.Errorf("Claim after an endless TTL = %v, want AlreadyDone", st)
	}
}
