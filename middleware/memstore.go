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
	// means 100,000.
	MaxEntries int
}

// DefaultMemoryStoreMaxEntries is MemoryStoreConfig.MaxEntries' default.
const DefaultMemoryStoreMaxEntries = 100_000

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
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if i, ok := s.index[key]; ok {
		e := &s.ring[i]
		if now.Before(e.expires) {
			if e.done {
				return AlreadyDone, nil
			}
			return InProgress, nil
		}
		e.owner, e.done, e.expires = owner, false, now.Add(lease)
		return Claimed, nil
	}
	s.insert(memEntry{key: key, owner: owner, expires: now.Add(lease)})
	return Claimed, nil
}

// Commit implements [DedupStore].
func (s *MemoryStore) Commit(_ context.Context, key string, ttl time.Duration) error {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if i, ok := s.index[key]; ok {
		e := &s.ring[i]
		e.owner, e.done, e.expires = "", true, now.Add(ttl)
		return nil
	}
	s.insert(memEntry{key: key, done: true, expires: now.Add(ttl)})
	return nil
}

// Release implements [DedupStore].
func (s *MemoryStore) Release(_ context.Context, key, owner string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i, ok := s.index[key]; ok {
		e := &s.ring[i]
		if !e.done && e.owner == owner {
			delete(s.index, key)
			*e = memEntry{}
		}
	}
	return nil
}

// Len returns the number of keys stored, expired ones not yet overwritten
// included.
func (s *MemoryStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.index)
}

// insert stores a new key, forgetting the oldest inserted one when full.
// s.mu must be held.
func (s *MemoryStore) insert(e memEntry) {
	if len(s.ring) < s.max {
		s.index[e.key] = len(s.ring)
		s.ring = append(s.ring, e)
		return
	}
	i := s.next
	s.next = (s.next + 1) % s.max
	if old := s.ring[i].key; old != "" {
		delete(s.index, old)
	}
	s.ring[i] = e
	s.index[e.key] = i
}
