package middleware

import (
	"context"
	"hash/maphash"
	"math"
	"sync"
	"time"
)

// MemoryStoreConfig configures [NewMemoryStore].
type MemoryStoreConfig struct {
	// MaxEntries bounds the number of keys kept (claims and done records).
	// When full, an old key is forgotten to make room, even before its
	// TTL: size it above the message rate times the TTL you rely on. Zero
	// means 10,000 (about 1.5 MB).
	MaxEntries int
}

// DefaultMemoryStoreMaxEntries is MemoryStoreConfig.MaxEntries' default.
const DefaultMemoryStoreMaxEntries = 10_000

// MemoryStore is an in-process [DedupStore], bounded both by size and by
// time: entries expire lazily when looked at after their lease or TTL, and
// when MaxEntries keys are stored an old one makes room. Every operation is
// O(1) under the mutex of the key's shard (below); it starts no goroutines
// and holds no timers. Memory grows with use up to MaxEntries entries. It
// is safe for concurrent use. The context arguments are ignored.
//
// The keys are spread by hash over shards, each with its own mutex and a
// ring of its share of MaxEntries (the oldest key inserted into a shard
// makes room in it): many handlers running at once (key or unordered
// ordering, a concurrency above 1) would otherwise queue on one mutex.
// There is a shard per 256 entries, up to 16: a store of fewer than 512
// entries has one, and so forgets exactly the oldest key inserted.
type MemoryStore struct {
	seed   maphash.Seed
	shards []memShard
}

// memShardMin is the fewest entries a shard of a [MemoryStore] holds, and
// memShards the most shards a store has.
const (
	memShardMin = 256
	memShards   = 16
)

// memShard is one mutex's part of a [MemoryStore]: a map from key to slot
// and a ring of at most max entries.
type memShard struct {
	mu    sync.Mutex
	max   int
	index map[string]int // key -> ring slot
	ring  []memEntry
	next  int      // ring position the next new key takes once the ring is full
	_     [64]byte // the next shard's mutex on another cache line
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
	n := min(memShards, max(cfg.MaxEntries/memShardMin, 1))
	s := &MemoryStore{seed: maphash.MakeSeed(), shards: make([]memShard, n)}
	for i := range s.shards {
		// MaxEntries in all: the first MaxEntries%n shards take one more.
		s.shards[i] = memShard{max: cfg.MaxEntries / n, index: make(map[string]int)}
		if i < cfg.MaxEntries%n {
			s.shards[i].max++
		}
	}
	return s
}

// shard returns the shard of key.
func (s *MemoryStore) shard(key string) *memShard {
	if len(s.shards) == 1 {
		return &s.shards[0]
	}
	return &s.shards[maphash.String(s.seed, key)%uint64(len(s.shards))]
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
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	i, ok := sh.index[key]
	if !ok {
		return false, nil
	}
	e := &sh.ring[i]
	if e.done || e.owner != owner || e.token != 0 {
		return false, nil
	}
	e.expires = expires
	return true, nil
}

// claim is Claim for an owner given as a string or, from [Dedup] in this
// process, as a token; it also returns the key's ring slot in its shard, for
// commit and release.
func (s *MemoryStore) claim(key, owner string, token uint64, lease time.Duration) (ClaimState, int) {
	now := monoNow()
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if i, ok := sh.index[key]; ok {
		e := &sh.ring[i]
		if now < e.expires {
			if e.done {
				return AlreadyDone, i
			}
			return InProgress, i
		}
		e.owner, e.token, e.done, e.expires = owner, token, false, monoAfter(now, lease)
		return Claimed, i
	}
	return Claimed, sh.insert(memEntry{key: key, owner: owner, token: token, expires: monoAfter(now, lease)})
}

// commit marks key done. slot is where claim found or put key in its shard,
// or -1.
func (s *MemoryStore) commit(key string, slot int, ttl time.Duration) {
	expires := monoAfter(monoNow(), ttl)
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if slot < 0 || sh.ring[slot].key != key {
		var ok bool
		if slot, ok = sh.index[key]; !ok {
			sh.insert(memEntry{key: key, done: true, expires: expires})
			return
		}
	}
	e := &sh.ring[slot]
	e.owner, e.token, e.done, e.expires = "", 0, true, expires
}

// release drops key's claim if the owner (string or token) still holds it.
// slot is where claim found or put key in its shard, or -1.
func (s *MemoryStore) release(key string, slot int, owner string, token uint64) {
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if slot < 0 || sh.ring[slot].key != key {
		var ok bool
		if slot, ok = sh.index[key]; !ok {
			return
		}
	}
	e := &sh.ring[slot]
	if !e.done && e.owner == owner && e.token == token {
		delete(sh.index, key)
		*e = memEntry{}
	}
}

// Len returns the number of keys stored, expired ones not yet overwritten
// included.
func (s *MemoryStore) Len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += len(sh.index)
		sh.mu.Unlock()
	}
	return n
}

// insert stores e under a ring slot, forgetting the oldest key inserted
// into the shard when its ring is full, and returns the slot. s.mu must be
// held (s being the shard).
func (s *memShard) insert(e memEntry) int {
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
