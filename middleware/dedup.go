package middleware

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// ClaimState is the outcome of [DedupStore].Claim.
type ClaimState int

// Claim outcomes.
const (
	// Claimed: no live record existed; the caller now holds a claim on the
	// key until it commits, releases, or the lease runs out.
	Claimed ClaimState = iota + 1
	// AlreadyDone: the key was committed within its TTL: a duplicate.
	AlreadyDone
	// InProgress: another owner holds a live claim on the key.
	InProgress
)

// String returns "claimed", "already-done" or "in-progress".
func (s ClaimState) String() string {
	switch s {
	case Claimed:
		return "claimed"
	case AlreadyDone:
		return "already-done"
	case InProgress:
		return "in-progress"
	}
	return fmt.Sprintf("ClaimState(%d)", int(s))
}

// DedupStore records which messages were processed, for [Dedup]. It is
// claim -> process -> commit: a claim is a lease held while the handler runs;
// a commit turns it into a "done" record kept for a TTL; a release drops the
// claim so that a retry or a replay is processed. Implementations must be
// safe for concurrent use by many goroutines (and, for shared stores, many
// processes). Implementations: [MemoryStore]; Redis in
// middleware/dedupredis; PostgreSQL in middleware/dedupsql; a conformance
// test in middleware/deduptest.
type DedupStore interface {
	// Claim atomically looks at key: with no live record it records a claim
	// by owner that expires after lease and returns Claimed; with a done
	// record it returns AlreadyDone; with a live claim (any owner) it returns
	// InProgress. An expired claim or done record counts as no record.
	Claim(ctx context.Context, key, owner string, lease time.Duration) (ClaimState, error)
	// Commit records key as done for ttl, whoever holds the claim (the work
	// is done; a lost lease must not make it run again).
	Commit(ctx context.Context, key string, ttl time.Duration) error
	// Release deletes key's claim if owner still holds it; a done record or
	// another owner's claim is left alone. Releasing a missing key is not
	// an error.
	Release(ctx context.Context, key, owner string) error
}

// DedupConfig configures [Dedup]. Zero fields mean the defaults.
type DedupConfig struct {
	// Store records claims and done keys. Zero means a private
	// [MemoryStore] with default settings for each wrapped handler: dedup
	// within one process only. Use a shared store (Redis, PostgreSQL) when
	// several processes consume the same messages.
	Store DedupStore
	// Key derives the dedup key of a message. Zero means the message UUID
	// (ce_id). An error, or an empty key, makes the message fail with a
	// permanent error of type [ReasonDedupKey].
	Key func(*message.Message) (string, error)
	// Namespace is prefixed to every key with a "/" so that handlers
	// sharing a store dedup independently: a message consumed by two
	// handlers must run in each. Zero means the handler name
	// (message.HandlerNameFromCtx), or no prefix outside a router. It is
	// never used with the private default store.
	Namespace string
	// Lease is how long a claim lives when its holder neither commits nor
	// releases it (the process crashed). It must be longer than the
	// longest handling, retries and breaker pauses included; until it runs
	// out, redeliveries of the message are nacked as in progress. Zero
	// means 5 minutes.
	Lease time.Duration
	// TTL is how long a done record is kept: duplicates arriving later are
	// processed again. Zero means 24 hours.
	TTL time.Duration
	// StoreTimeout bounds each Commit and Release call, which run on a
	// context detached from the message's cancellation so that shutdown does
	// not lose them. Zero means 5s. Not used with [MemoryStore].
	StoreTimeout time.Duration
	// OnDuplicate, when set, is called for each message not processed
	// because of its key: State AlreadyDone (a dedup hit, acked with no
	// effect) or InProgress (nacked for later). Telemetry counts dedup hits
	// with it. It runs on the handler goroutine and must not block.
	OnDuplicate func(DedupInfo)
	// OnStoreError, when set, is called when a Commit or Release fails.
	// Neither changes the outcome: a failed commit still acks (the work is
	// done), a failed release still returns the handler's error (the claim
	// expires after Lease). It must not block.
	OnStoreError func(DedupInfo)
}

// DedupInfo describes a dedup event for the [DedupConfig] hooks.
type DedupInfo struct {
	// Message is the message concerned.
	Message *message.Message
	// Key is the store key (namespace included).
	Key string
	// State is the claim outcome (OnDuplicate).
	State ClaimState
	// Op is the failed store operation, "commit" or "release" (OnStoreError).
	Op string
	// Err is the store's error (OnStoreError).
	Err error
}

// Defaults of [DedupConfig].
const (
	DefaultDedupLease        = 5 * time.Minute
	DefaultDedupTTL          = 24 * time.Hour
	DefaultDedupStoreTimeout = 5 * time.Second
)

// Dedup returns a middleware that processes each message key at most once
// with success, in claim -> process -> commit steps:
//
//   - Claim the key. A done key is a duplicate: the message is acked with no
//     effect (OnDuplicate, State AlreadyDone). A key claimed by a live
//     concurrent delivery returns [ErrInProgress]: duplicates never run
//     concurrently; the message is nacked and comes back later.
//   - Run the handler.
//   - On success commit the key (done for TTL); on failure release the
//     claim, so that a retry, a redelivery or a replay from the dead-letter
//     topic is processed, not swallowed as a duplicate.
//
// A store failure on claim fails closed: a [*DedupStoreError], which is a
// redelivery error, never dead-lettered. Dedup is safe with [Retry] on
// either side of it; place it inside [DeadLetter] (a dead-lettered message
// must not be committed).
func Dedup(cfg DedupConfig) message.HandlerMiddleware {
	cfg = cfg.withDefaults()
	return func(h message.HandlerFunc) message.HandlerFunc {
		d := newDedup(cfg)
		if d.mem != nil {
			return func(msg *message.Message) ([]*message.Message, error) {
				key, err := d.key(msg)
				if err != nil {
					return nil, err
				}
				return d.handleMemory(h, msg, key)
			}
		}
		return func(msg *message.Message) ([]*message.Message, error) {
			return d.handle(h, msg)
		}
	}
}

func (cfg DedupConfig) withDefaults() DedupConfig {
	if cfg.Lease < 0 || cfg.TTL < 0 || cfg.StoreTimeout < 0 {
		panic("middleware: DedupConfig durations must not be negative")
	}
	if cfg.Lease == 0 {
		cfg.Lease = DefaultDedupLease
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultDedupTTL
	}
	if cfg.StoreTimeout == 0 {
		cfg.StoreTimeout = DefaultDedupStoreTimeout
	}
	return cfg
}

// newDedup returns the state of one handler's [Dedup]; cfg has its
// defaults.
func newDedup(cfg DedupConfig) *dedup {
	d := &dedup{cfg: cfg, store: cfg.Store}
	if d.store == nil {
		d.store = NewMemoryStore(MemoryStoreConfig{})
		d.private = true
	}
	d.mem, _ = d.store.(*MemoryStore)
	return d
}

type dedup struct {
	cfg     DedupConfig
	store   DedupStore
	private bool         // the store is this handler's own: no namespace needed
	mem     *MemoryStore // the store, when in memory: the fast path
}

type dedupKeyError struct{ err error }

func (e *dedupKeyError) Error() string     { return "middleware: dedup key: " + e.err.Error() }
func (e *dedupKeyError) Unwrap() error     { return e.err }
func (e *dedupKeyError) ErrorType() string { return ReasonDedupKey }
func (e *dedupKeyError) Permanent() bool   { return true }

var errEmptyKey = errors.New("empty key")

func (d *dedup) key(msg *message.Message) (string, error) {
	var key string
	if d.cfg.Key != nil {
		k, err := d.cfg.Key(msg)
		if err != nil {
			return "", &dedupKeyError{err}
		}
		key = k
	} else {
		key = msg.UUID
	}
	if key == "" {
		return "", &dedupKeyError{errEmptyKey}
	}
	if d.private {
		return key, nil
	}
	ns := d.cfg.Namespace
	if ns == "" {
		ns = message.HandlerNameFromCtx(msg.Context())
	}
	if ns == "" {
		return key, nil
	}
	return ns + "/" + key, nil
}

func (d *dedup) handle(h message.HandlerFunc, msg *message.Message) ([]*message.Message, error) {
	key, err := d.key(msg)
	if err != nil {
		return nil, err
	}
	ctx := msg.Context()
	owner := newOwner()
	state, err := d.store.Claim(ctx, key, owner, d.cfg.Lease)
	if err != nil {
		if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
			err = fmt.Errorf("%w: %w", cerr, err)
		}
		return nil, &DedupStoreError{Op: "claim", Err: err}
	}
	switch state {
	case Claimed:
	case AlreadyDone, InProgress:
		return d.duplicate(msg, key, state)
	default:
		return nil, &DedupStoreError{Op: "claim", Err: fmt.Errorf("unknown claim state %d", int(state))}
	}

	out, herr := h(msg)

	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.cfg.StoreTimeout)
	defer cancel()
	if herr != nil {
		if rerr := d.store.Release(sctx, key, owner); rerr != nil && d.cfg.OnStoreError != nil {
			d.cfg.OnStoreError(DedupInfo{Message: msg, Key: key, Op: "release", Err: rerr})
		}
	} else if cerr := d.store.Commit(sctx, key, d.cfg.TTL); cerr != nil && d.cfg.OnStoreError != nil {
		d.cfg.OnStoreError(DedupInfo{Message: msg, Key: key, Op: "commit", Err: cerr})
	}
	if herr != nil {
		return nil, herr
	}
	return out, nil
}

// handleMemory is handle for a [MemoryStore]: no contexts, no owner
// strings, one map lookup per message.
func (d *dedup) handleMemory(h message.HandlerFunc, msg *message.Message, key string) ([]*message.Message, error) {
	token := ownerSeq.Add(1)
	state, slot := d.mem.claim(key, "", token, monoNow(), d.cfg.Lease)
	if state != Claimed {
		return d.duplicate(msg, key, state)
	}
	out, err := h(msg)
	if err != nil {
		d.mem.release(key, slot, "", token)
		return nil, err
	}
	d.mem.commit(key, slot, d.cfg.TTL)
	return out, nil
}

func (d *dedup) duplicate(msg *message.Message, key string, state ClaimState) ([]*message.Message, error) {
	if d.cfg.OnDuplicate != nil {
		d.cfg.OnDuplicate(DedupInfo{Message: msg, Key: key, State: state})
	}
	if state == InProgress {
		return nil, ErrInProgress
	}
	return nil, nil
}

var (
	ownerPrefix = func() string {
		var b [8]byte
		_, _ = rand.Read(b[:])
		return hex.EncodeToString(b[:]) + "-"
	}()
	ownerSeq atomic.Uint64
)

// newOwner returns a claim owner token unique across processes: a random
// per-process prefix and a sequence number.
func newOwner() string {
	var buf [40]byte
	b := append(buf[:0], ownerPrefix...)
	b = strconv.AppendUint(b, ownerSeq.Add(1), 36)
	return string(b)
}
