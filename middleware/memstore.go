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

	mu   sync.Mutex
	seed maphash.Seed
	// index maps keys to ring slots: an open-addressing hash table with
	// linear probing, at most half full, of entries (see idx) holding the
	// slot and the low 32 bits of the key's hash, 0 when empty. The Dedup
	// fast path looks a key up, forgets the oldest and inserts the new one
	// with one hash computation and no runtime map calls: cheaper, and a
	// shallow stack under the middleware stack. The hash bits in the entry
	// give each entry's home position and tell most keys apart, so probing
	// and deletion read the ring only for the entry they look for: the
	// ring (64 bytes an entry) and the index together outgrow the CPU's
	// caches, and each ring read is a cache miss (measured: about 60 ns a
	// message of BenchmarkStackStep/dedup).
	index []idx
	n     int // keys in index
	ring  []memEntry
	next  int // ring position the next new key takes once the ring is full
}

type memEntry struct {
	hash    uint64 // of key
	key     string // "" when the slot is free
	owner   string // claim owner; "" once done
	token   uint64 // claim owner inside this process (the Dedup fast path)
	done    bool
	expires int64 // monoNow() at which the claim or record expires
}

// monoEpoch is where monoNow counts from.
var monoEpoch = time.Now()

// monoNow reads the monotonic clock, in nanoseconds since monoEpoch: the
// clock of the store's leases and TTLs and of [Timeout]'s deadlines, which
// need no wall time. (Inside a testing/synctest bubble time.Now has no
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

// maxMemoryStoreEntries bounds MemoryStoreConfig.MaxEntries: index
// entries hold a ring slot in 32 bits, and an index (twice the entries at
// most) of at most 1<<32 entries is what 32 hash bits can place.
const maxMemoryStoreEntries = 1 << 31

// NewMemoryStore returns an empty [MemoryStore]. It panics when
// MaxEntries is negative or above 1<<31 (a ring of 128 GiB).
func NewMemoryStore(cfg MemoryStoreConfig) *MemoryStore {
	if cfg.MaxEntries < 0 || cfg.MaxEntries > maxMemoryStoreEntries {
		panic("middleware: MemoryStoreConfig.MaxEntries must be between 0 and 1<<31")
	}
	if cfg.MaxEntries == 0 {
		cfg.MaxEntries = DefaultMemoryStoreMaxEntries
	}
	return &MemoryStore{max: cfg.MaxEntries, seed: maphash.MakeSeed(), index: make([]idx, 64)}
}

// Claim implements [DedupStore].
func (s *MemoryStore) Claim(_ context.Context, key, owner string, lease time.Duration) (ClaimState, error) {
	st, _ := s.claim(key, owner, 0, monoNow(), lease)
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
	_, i := s.find(key, maphash.String(s.seed, key))
	if i < 0 {
		return false, nil
	}
	e := &s.ring[i]
	if e.done || e.owner != owner || e.token != 0 {
		return false, nil
	}
	e.expires = expires
	return true, nil
}

// claim is Claim at now (monoNow) for an owner given as a string or, from
// [Dedup] in this process, as a token; it also returns the slot, for commit
// and release. It runs on the handler goroutine's stack under the whole
// middleware stack, so it keeps its frame small: no defer, no entry
// temporaries.
func (s *MemoryStore) claim(key, owner string, token uint64, now int64, lease time.Duration) (ClaimState, int) {
	h := maphash.String(s.seed, key)
	s.mu.Lock()
	pos, i := s.find(key, h)
	if i >= 0 {
		e := &s.ring[i]
		if now < e.expires {
			st := InProgress
			if e.done {
				st = AlreadyDone
			}
			s.mu.Unlock()
			return st, i
		}
		e.owner, e.token, e.done, e.expires = owner, token, false, monoAfter(now, lease)
		s.mu.Unlock()
		return Claimed, i
	}
	i = s.insert(pos, key, h)
	e := &s.ring[i]
	e.owner, e.token, e.expires = owner, token, monoAfter(now, lease)
	s.mu.Unlock()
	return Claimed, i
}

// commit marks key done. slot is where claim found or put key, or -1.
func (s *MemoryStore) commit(key string, slot int, ttl time.Duration) {
	expires := monoAfter(monoNow(), ttl)
	s.mu.Lock()
	if slot < 0 || s.ring[slot].key != key {
		h := maphash.String(s.seed, key)
		var pos int
		if pos, slot = s.find(key, h); slot < 0 {
			slot = s.insert(pos, key, h)
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
		if _, slot = s.find(key, maphash.String(s.seed, key)); slot < 0 {
			s.mu.Unlock()
			return
		}
	}
	e := &s.ring[slot]
	if !e.done && e.owner == owner && e.token == token {
		s.unindex(slot)
		*e = memEntry{}
	}
	s.mu.Unlock()
}

// Len returns the number of keys stored, expired ones not yet overwritten
// included.
func (s *MemoryStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// idx is an index entry: the low 32 bits of a key's hash, then its ring
// slot + 1; 0 is an empty entry.
type idx uint64

func newIdx(h uint64, slot int) idx { return idx(h<<32 | uint64(slot+1)) }

// slot returns the entry's ring slot.
func (v idx) slot() int { return int(uint32(v)) - 1 }

// hash returns the low 32 bits of the entry's key hash, which give its home
// position in an index of at most 1<<32 entries.
func (v idx) hash() uint64 { return uint64(v >> 32) }

// find returns key's ring slot, or -1 and the index position where key
// would go. h is key's hash. s.mu must be held.
func (s *MemoryStore) find(key string, h uint64) (pos, slot int) {
	mask := uint64(len(s.index) - 1)
	tag := uint64(uint32(h))
	for p := h & mask; ; p = (p + 1) & mask {
		v := s.index[p]
		if v == 0 {
			return int(p), -1
		}
		if v.hash() == tag {
			if e := &s.ring[v.slot()]; e.hash == h && e.key == key {
				return int(p), v.slot()
			}
		}
	}
}

// insert stores a new key at index position pos (from find), forgetting
// the oldest inserted key when the ring is full, and returns its ring
// slot, whose other fields the caller sets. s.mu must be held.
func (s *MemoryStore) insert(pos int, key string, h uint64) int {
	var i int
	changed := false
	if n := len(s.ring); n < s.max {
		if n == cap(s.ring) {
			s.grow()
		}
		i = n
		s.ring = s.ring[:n+1]
	} else {
		i = s.next
		s.next = (s.next + 1) % s.max
		if s.ring[i].key != "" {
			s.unindex(i)
			changed = true
		}
	}
	if 2*(s.n+1) > len(s.index) {
		s.growIndex()
		changed = true
	}
	if changed {
		// The index changed since find (an unindex shifted entries, or it
		// grew): look for the free position again.
		pos, _ = s.find(key, h)
	}
	e := &s.ring[i]
	e.hash, e.key, e.owner, e.token, e.done, e.expires = h, key, "", 0, false, 0
	s.index[pos] = newIdx(h, i)
	s.n++
	return i
}

// unindex removes ring slot i's key from the index (backward-shift
// deletion, so probes need no tombstones). s.mu must be held.
func (s *MemoryStore) unindex(i int) {
	mask := uint64(len(s.index) - 1)
	p := s.ring[i].hash & mask
	for s.index[p].slot() != i {
		p = (p + 1) & mask
	}
	s.index[p] = 0
	s.n--
	for j := (p + 1) & mask; s.index[j] != 0; j = (j + 1) & mask {
		home := s.index[j].hash() & mask
		// The entry at j may move to the hole at p unless its home lies
		// cyclically in (p, j].
		if (j-home)&mask >= (j-p)&mask {
			s.index[p], s.index[j] = s.index[j], 0
			p = j
		}
	}
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

// growIndex doubles the index.
//
//go:noinline
func (s *MemoryStore) growIndex() {
	index := make([]idx, 2*len(s.index))
	mask := uint64(len(index) - 1)
	for _, v := range s.index {
		if v == 0 {
			continue
		}
		p := v.hash() & mask
		for index[p] != 0 {
			p = (p + 1) & mask
		}
		index[p] = v
	}
	s.index = index
}
