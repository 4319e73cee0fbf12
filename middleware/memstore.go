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
	expires time.Time
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

// claim is Claim for an owner given as a string or, from [Dedup] in this
// process, as a token; it also returns the slot, for commit and release.
func (s *MemoryStore) claim(key, owner string, token uint64, lease time.Duration) (ClaimState, int) {
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
	return Claimed, s.insert(memEntry{key: key, owner: owner, token: token, expires: now.Add(lease)})
}

// commit marks key done. slot is where claim found or put key, or -1.
func (s *MemoryStore) commit(key string, slot int, ttl time.Duration) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if slot < 0 || s.ring[slot].key != key {
		var ok bool
		if slot, ok = s.index[key]; !ok {
			s.insert(memEntry{key: key, done: true, expires: now.Add(ttl)})
			return
		}
	}
	e := &s.ring[slot]
	e.owner, e.token, e.done, e.expires = "", 0, true, now.Add(ttl)
}

// release drops key's claim if the owner (string or token) still holds it.
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

// insert stores a new key, forgetting the oldest inserted one when full,
// and returns its slot. s.mu must be held.
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
