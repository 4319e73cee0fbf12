package middleware

import (
	"context"
	"math"
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
	index map[string]int // key -> ring slot
	ring  []memEntry
	next  int // ring position the next new key takes once the ring is full
}

type memEntry struct {
	key     string // "" when the slot is free
	owner   string // claim owner; "" once done
	token   uint64 // claim owner inside this process (Dedup with a MemoryStore)
	done    bool
	expires int64 // monoNow() at which the claim or record expires
}

// monoEpoch is where monoNow counts from.
var monoEpoch = time.Now()

// monoNow reads the monotonic clock, in nanoseconds since monoEpoch: the
// clock of the store's leases and TTLs, which need no wall time. (Inside a testing/synctest bubble time.Now has no
// monotonic reading, and monoNow counts the bubble's fake wall time.)
func monoNow() int64 { return int64(time.Since(monoEpoch)) }

// monoAfter returns the monoNow() reading d after now, saturated: a
// duration too long to add (math.MaxInt64 for "for ever") gives the end of
// time, not a reading in the past.
func monoAfter(now int64, d time.Duration) int64 {
	if t := now + int64(d); d < 0 || t >= now {
		return t
	}
	return math.MaxInt64
}

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

// Renew implements [DedupStore].
func (s *MemoryStore) Renew(_ context.Context, key, owner string, lease time.Duration) (bool, error) {
	expires := monoAfter(monoNow(), lease)
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.index[key]
	if !ok {
		return false, nil
	}
	e := &s.ring[i]
	if e.done || e.owner != owner || e.token != 0 {
		return false, nil
	}
	e.expires = expires
	return true, nil
}

// claim is Claim for an owner given as a string or, from [Dedup] in this
// process, as a token; it also returns the key's ring slot, for commit and
// release.
func (s *MemoryStore) claim(key, owner string, token uint64, lease time.Duration) (ClaimState, int) {
	now := monoNow()
	s.mu.Lock()
	defer s.mu.Unlock()
	if i, ok := s.index[key]; ok {
		e := &s.ring[i]
		if now < e.expires {
			if e.done {
				return AlreadyDone, i
			}
			return InProgress, i
		}
		e.owner, e.token, e.done, e.expires = owner, token, false, monoAfter(now, lease)
		return Claimed, i
	}
	return Claimed, s.insert(memEntry{key: key, owner: owner, token: token, expires: monoAfter(now, lease)})
}

// commit marks key done. slot is where claim found or put key, or -1.
func (s *MemoryStore) commit(key string, slot int, ttl time.Duration) {
	expires := monoAfter(monoNow(), ttl)
	s.mu.Lock()
	defer s.mu.Unlock()
	if slot < 0 || s.ring[slot].key != key {
		var ok bool
		if slot, ok = s.index[key]; !ok {
			s.insert(memEntry{key: key, done: true, expires: expires})
			return
		}
	}
	e := &s.ring[slot]
	e.owner, e.token, e.done, e.expires = "", 0, true, expires
}

// release drops key's claim if the owner (string or token) still holds it.
// slot is where claim found or put key, or -1.
func (s *MemoryStore) release(key string, slot int, owner string, token uint64) {
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
		*e = memEntry{}
	}
}

// Len returns the number of keys stored, expired ones not yet overwritten
// included.
func (s *MemoryStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.index)
}

// insert stores e under a ring slot, forgetting the oldest inserted key
// when the ring is full, and returns the slot. s.mu must be held.
func (s *MemoryStore) insert(e memEntry) int {
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
