package middleware

import (
	"context"
	"sync"
	"time"
)

// MemoryStoreConfig configures [NewMemoryStore].
type MemoryStoreConfig struct {
	// MaxEntries bounds the number of keys kept (claims and done records).
	// When full, the oldest inserted key is forgotten first, even before its
	// TTL: size it above the message rate times the TTL you rely on. Zero
	// means 10,000 (about 1.5 MB).
	MaxEntries int
}

// DefaultMemoryStoreMaxEntries is MemoryStoreConfig.MaxEntries' default.
const DefaultMemoryStoreMaxEntries = 10_000

// MemoryStore is an in-process [DedupStore], bounded both by size and by
// time: entries expire lazily when looked at after their lease or TTL, and
// when MaxEntries keys are stored the oldest inserted one makes room (a
// ring). Every operation is O(1) under one mutex; it starts no goroutines and
// holds no timers. Memory grows with use up to MaxEntries entries. It is safe
// for concurrent use. The context arguments are ignored.
type MemoryStore struct {
	max int

	mu    sync.Mutex
	index map[string]int // key -> position in ring
	ring  []memEntry
	next  int // ring position the next new key takes once the ring is full
}

type memEntry struct {
	key     string // "" when the slot is free
	owner   string // claim owner; "" once done
	token   uint64 // claim owner inside this process (the Dedup fast path)
	done    bool
	expires int64 // monoNow() at which the claim or record expires
}

// monoEpoch is where monoNow counts from.
var monoEpoch = time.Now()

// monoNow reads the monotonic clock, in nanoseconds since monoEpoch: the
// store's clock, which needs no wall time.
func monoNow() int64 { return int64(time.Since(monoEpoch)) }

// NewMemoryStore returns an empty [MemoryStore]. It panics when
// MaxEntries is negative.
func NewMemoryStore(cfg MemoryStoreConfig) *MemoryStore {
	if cfg.MaxEntries < 0 {
		panic("middleware: MemoryStoreConfig.MaxEntries must not be negative")
	}
	if cfg.MaxEntries == 0 {
		cfg.MaxEntries = DefaultMemoryStoreMaxEntries
	}
	return &MemoryStore{max: cfg.MaxEntries, index: make(map[string]int)}
}

// Claim implements [DedupStore].
func (s *MemoryStore) Claim(_ context.Context, key, owner string, lease time.Duration) (ClaimState, error) {
	st, _ := s.claim(key, owner, 0, lease)
	return st, nil
}

// Commit implements [DedupStore].
func (s *MemoryStore) Commit(_ context.Context, key string, ttl time.Duration) error {
	s.commit(key, -1, ttl)
	return nil
}

// Release implements [DedupStore].
func (s *MemoryStore) Release(_ context.Context, key, owner string) error {
	s.release(key, -1, owner, 0)
	return nil
}

// claim is Claim for an owner given as a string or, from [Dedup] in this
// process, as a token; it also returns the slot, for commit and release.
// It runs on the handler goroutine's stack under the whole middleware
// stack, so it keeps its frame small: no defer, no entry temporaries.
func (s *MemoryStore) claim(key, owner string, token uint64, lease time.Duration) (ClaimState, int) {
	now := monoNow()
	s.mu.Lock()
	if i, ok := s.index[key]; ok {
		e := &s.ring[i]
		if now < e.expires {
			st := InProgress
			if e.done {
				st = AlreadyDone
			}
			s.mu.Unlock()
			return st, i
		}
		e.owner, e.token, e.done, e.expires = owner, token, false, now+int64(lease)
		s.mu.Unlock()
		return Claimed, i
	}
	i := s.slotFor(key)
	e := &s.ring[i]
	e.owner, e.token, e.expires = owner, token, now+int64(lease)
	s.mu.Unlock()
	return Claimed, i
}

// commit marks key done. slot is where claim found or put key, or -1.
func (s *MemoryStore) commit(key string, slot int, ttl time.Duration) {
	expires := monoNow() + int64(ttl)
	s.mu.Lock()
	if slot < 0 || s.ring[slot].key != key {
		var ok bool
		if slot, ok = s.index[key]; !ok {
			slot = s.slotFor(key)
		}
	}
	e := &s.ring[slot]
	e.owner, e.token, e.done, e.expires = "", 0, true, expires
	s.mu.Unlock()
}

// release drops key's claim if the owner (string or token) still holds it.
func (s *MemoryStore) release(key string, slot int, owner string, token uint64) {
	s.mu.Lock()
	if slot < 0 || s.ring[slot].key != key {
		var ok bool
		if slot, ok = s.index[key]; !ok {
			s.mu.Unlock()
			return
		}
	}
	e := &s.ring[slot]
	if !e.done && e.owner == owner && e.token == token {
		delete(s.index, key)
		*e = memEntry{}
	}
	s.mu.Unlock()
}

// Len returns the number of keys stored, expired ones not yet overwritten
// included.
func (s *MemoryStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.index)
}

// slotFor stores a new key, forgetting the oldest inserted one when full,
// and returns its slot, whose other fields the caller sets. s.mu must be
// held.
func (s *MemoryStore) slotFor(key string) int {
	var i int
	if n := len(s.ring); n < s.max {
		if n == cap(s.ring) {
			s.grow()
		}
		i = n
		s.ring = s.ring[:n+1]
	} else {
		i = s.next
		s.next = (s.next + 1) % s.max
		if old := s.ring[i].key; old != "" {
			delete(s.index, old)
		}
	}
	e := &s.ring[i]
	e.key, e.owner, e.token, e.done, e.expires = key, "", 0, false, 0
	s.index[key] = i
	return i
}

// grow makes room in the ring for more entries, up to s.max.
//
//go:noinline
func (s *MemoryStore) grow() {
	c := min(max(2*cap(s.ring), 64), s.max)
	ring := make([]memEntry, len(s.ring), c)
	copy(ring, s.ring)
	s.ring = ring
}
