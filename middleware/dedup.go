package middleware

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	mrand "math/rand/v2"
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
	// key until it commits, releases, or the lease runs out unrenewed.
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
// claim -> process -> commit: a claim is a short lease that its owner renews
// while the handler runs (a heartbeat), so that it belongs to a live owner;
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
	// Renew extends owner's claim on key to lease from now and reports
	// whether owner still holds it: false when the key is done or another
	// owner claimed it. A claim of owner that expired and that nobody else
	// took may be renewed. [Dedup] calls it every lease/3 while the
	// handler runs.
	Renew(ctx context.Context, key, owner string, lease time.Duration) (bool, error)
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
	// Lease is how long a claim outlives its owner. The owner renews its
	// claim every Lease/3 while the handler runs (retries and breaker
	// pauses included), so a live handler keeps its claim however long it
	// runs, and the claims of a process that crashed expire within Lease:
	// a redelivery of such a message waits at most about Lease before it is
	// processed. Make it several times longer than a store round trip
	// under load: a claim whose renewals fail for 2/3 of Lease can be taken
	// by a duplicate delivery. Zero means 10s.
	//
	// With a [MemoryStore] the owner and the store live and die together:
	// its claims are held exactly as long as the handler runs, with no
	// heartbeat, and Lease is not used.
	Lease time.Duration
	// TTL is how long a done record is kept: duplicates arriving later are
	// processed again. Zero means 24 hours.
	TTL time.Duration
	// StoreTimeout bounds each Commit and Release call, which run on a
	// context detached from the message's cancellation so that shutdown does
	// not lose them. Zero means 5s. Not used with [MemoryStore].
	StoreTimeout time.Duration
	// Observer, when set, is told of each message not processed because
	// of its key (Duplicate: State AlreadyDone, a dedup hit acked with no
	// effect, also after a wait); once for each message whose key another
	// owner holds, when it starts waiting for that claim to end
	// (DedupWaited, State InProgress: it waits with backoff, holding the
	// message, without spending retry attempts, until the owner commits,
	// releases, or its lease runs out unrenewed); and of each failed
	// Commit, Release or Renew, or a Renew that found the claim lost
	// (DedupStoreFailed). None changes the outcome: a failed commit still
	// acks (the work is done), a failed release still returns the
	// handler's error (the claim expires after Lease), a failed renewal is
	// tried again at the next beat. Renewal failures are reported, the
	// first one per message, when the handler returned. Nil means none.
	Observer Observer
}

// DedupInfo describes a dedup event for [Observer].Duplicate, DedupWaited
// and DedupStoreFailed.
type DedupInfo struct {
	// Message is the message concerned.
	Message *message.Message
	// Key is the store key (namespace included).
	Key string
	// State is the claim outcome (Duplicate, DedupWaited).
	State ClaimState
	// Op is the failed store operation, "commit", "release" or "renew"
	// (DedupStoreFailed).
	Op string
	// Err is the store's error (DedupStoreFailed).
	Err error
}

// Defaults of [DedupConfig].
const (
	DefaultDedupLease        = 10 * time.Second
	DefaultDedupTTL          = 24 * time.Hour
	DefaultDedupStoreTimeout = 5 * time.Second
)

// Dedup returns a middleware that processes each message key at most once
// with success, in claim -> process -> commit steps:
//
//   - Claim the key. A done key is a duplicate: the message is acked with no
//     effect (Observer.Duplicate, State AlreadyDone). A key claimed by another
//     delivery makes the message wait, with backoff and without spending
//     retry attempts, until that claim ends (Observer.DedupWaited, once): duplicates never
//     run concurrently. The wait ends early only when the message's context
//     ends; it then returns [ErrInProgress] (wrapping the context's error)
//     and the message is nacked.
//   - Run the handler, renewing the claim every Lease/3 (the heartbeat) so
//     that it lives as long as the handler runs, and no longer than Lease
//     after its process died.
//   - On success commit the key (done for TTL); on failure release the
//     claim, so that a retry, a redelivery or a replay from the dead-letter
//     topic is processed, not swallowed as a duplicate.
//
// A store failure on claim fails closed: a [*DedupStoreError], which is a
// redelivery error, never dead-lettered. Dedup is safe with [Retry] on
// either side of it; place it inside [DeadLetter] (a dead-lettered message
// must not be committed). Each message's heartbeat is a goroutine that ends
// before the message's handling returns.
func Dedup(cfg DedupConfig) message.HandlerMiddleware {
	cfg = cfg.withDefaults()
	return func(h message.HandlerFunc) message.HandlerFunc {
		d := newDedup(cfg)
		if d.mem != nil {
			// A MemoryStore: no contexts, no owner strings, no heartbeat.
			return func(msg *message.Message) ([]*message.Message, error) {
				c, run, err := d.claimMemory(msg)
				if !run {
					return nil, err
				}
				defer c.releaseIfHeld() // the handler panicked: do not hold the claim for ever
				out, err := h(msg)
				return c.settle(out, err)
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

var errEmptyKey = errors.New("empty key")

func (d *dedup) key(msg *message.Message) (string, error) {
	var key string
	if d.cfg.Key != nil {
		k, err := d.cfg.Key(msg)
		if err != nil {
			return "", Permanent(&dedupKeyError{err})
		}
		key = k
	} else {
		key = msg.UUID
	}
	if key == "" {
		return "", Permanent(&dedupKeyError{errEmptyKey})
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
	claim := func() (ClaimState, error) {
		state, err := d.store.Claim(ctx, key, owner, d.cfg.Lease)
		if err != nil {
			if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
				err = fmt.Errorf("%w: %w", cerr, err)
			}
			return 0, &DedupStoreError{Op: "claim", Err: err}
		}
		return state, nil
	}
	state, err := claim()
	if err == nil && state == InProgress {
		state, err = d.wait(msg, key, claim)
	}
	if err != nil {
		return nil, err
	}
	switch state {
	case Claimed:
	case AlreadyDone:
		return d.duplicate(msg, key, state)
	default:
		return nil, &DedupStoreError{Op: "claim", Err: fmt.Errorf("unknown claim state %d", int(state))}
	}

	hb := d.heartbeat(ctx, key, owner)
	out, herr := h(msg)
	if rerr := hb.stop(); rerr != nil {
		d.storeError(msg, key, "renew", rerr)
	}

	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.cfg.StoreTimeout)
	defer cancel()
	if herr != nil {
		if rerr := d.store.Release(sctx, key, owner); rerr != nil {
			d.storeError(msg, key, "release", rerr)
		}
		return nil, herr
	}
	if cerr := d.store.Commit(sctx, key, d.cfg.TTL); cerr != nil {
		d.storeError(msg, key, "commit", cerr)
	}
	return out, nil
}

func (d *dedup) storeError(msg *message.Message, key, op string, err error) {
	if d.cfg.Observer != nil {
		d.cfg.Observer.DedupStoreFailed(DedupInfo{Message: msg, Key: key, Op: op, Err: err})
	}
}

// heldLease is the lease of a [MemoryStore] claim made by [Dedup]: for
// ever, until the handler commits or releases it. The store lives in the
// claim owner's process, so the owner cannot die and leave the claim
// behind, and a slow handler keeps it without renewals.
const heldLease = time.Duration(math.MaxInt64)

// memClaim is a claim [Dedup] holds in its [MemoryStore] while the
// handler runs.
type memClaim struct {
	d     *dedup
	key   string
	slot  int
	token uint64
	held  bool
}

// claimMemory claims msg's key in d's MemoryStore. run reports whether the
// handler runs under the claim c; when not, err is the message's outcome
// (nil for a duplicate).
func (d *dedup) claimMemory(msg *message.Message) (c memClaim, run bool, err error) {
	key, err := d.key(msg)
	if err != nil {
		return c, false, err
	}
	token := ownerSeq.Add(1)
	state, slot := d.mem.claim(key, "", token, heldLease)
	if state == InProgress {
		if state, slot, err = d.waitMemory(msg, key, token); err != nil {
			return c, false, err
		}
	}
	if state != Claimed {
		_, err = d.duplicate(msg, key, state)
		return c, false, err
	}
	return memClaim{d: d, key: key, slot: slot, token: token, held: true}, true, nil
}

// settle commits the claim after the handler's success, or releases it
// after its failure, and returns the outcome.
func (c *memClaim) settle(out []*message.Message, err error) ([]*message.Message, error) {
	c.held = false
	if err != nil {
		c.d.mem.release(c.key, c.slot, "", c.token)
		return nil, err
	}
	c.d.mem.commit(c.key, c.slot, c.d.cfg.TTL)
	return out, nil
}

// releaseIfHeld releases the claim unless settle ran.
func (c *memClaim) releaseIfHeld() {
	if c.held {
		c.d.mem.release(c.key, c.slot, "", c.token)
	}
}

// waitMemory is wait for a [MemoryStore] claim by token; it returns the
// final state and the key's slot.
func (d *dedup) waitMemory(msg *message.Message, key string, token uint64) (ClaimState, int, error) {
	var slot int
	state, err := d.wait(msg, key, func() (ClaimState, error) {
		var st ClaimState
		st, slot = d.mem.claim(key, "", token, heldLease)
		return st, nil
	})
	return state, slot, err
}

func (d *dedup) duplicate(msg *message.Message, key string, state ClaimState) ([]*message.Message, error) {
	if d.cfg.Observer != nil {
		d.cfg.Observer.Duplicate(DedupInfo{Message: msg, Key: key, State: state})
	}
	if state == InProgress {
		return nil, ErrInProgress
	}
	return nil, nil
}

// Backoff of a message waiting for another owner's claim: the first try
// after dedupWaitInitial, each next wait doubled, up to the renewal
// interval (a claim's lease ends at most that long after its last
// renewal failed) and at most dedupWaitMax, each with ±20% jitter.
const (
	dedupWaitInitial = 50 * time.Millisecond
	dedupWaitMax     = 2 * time.Second
)

// wait makes msg wait for key's claim, held by another owner, to end,
// trying claim again after each backoff wait. It returns the first state
// other than InProgress, or [ErrInProgress] wrapping the context's error
// when msg's context ends first.
func (d *dedup) wait(msg *message.Message, key string, claim func() (ClaimState, error)) (ClaimState, error) {
	if d.cfg.Observer != nil {
		d.cfg.Observer.DedupWaited(DedupInfo{Message: msg, Key: key, State: InProgress})
	}
	ctx := msg.Context()
	maxWait := min(d.renewEvery(), dedupWaitMax)
	delay := dedupWaitInitial
	timer := time.NewTimer(jitter(delay))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%w: %w", ErrInProgress, ctx.Err())
		case <-timer.C:
		}
		state, err := claim()
		if err != nil || state != InProgress {
			return state, err
		}
		delay = min(2*delay, maxWait)
		timer.Reset(jitter(delay))
	}
}

// jitter returns d plus or minus up to 20%, so that waiters do not poll a
// shared store in step.
func jitter(d time.Duration) time.Duration {
	return d - d/5 + mrand.N(2*d/5+1)
}

// renewEvery is the heartbeat's interval: a third of the lease, so that
// two renewals in a row may fail before the claim is lost.
func (d *dedup) renewEvery() time.Duration { return max(d.cfg.Lease/3, time.Millisecond) }

// beat is a claim's heartbeat, started by [dedup.heartbeat].
type beat struct {
	stopc chan struct{}
	done  chan struct{}
	err   error // the first renewal failure; read after done is closed
}

// ErrClaimLost is what [Observer].DedupStoreFailed receives (Op "renew")
// when a renewal found that the handler's claim was no longer its own: its
// renewals had failed for longer than the lease, and another delivery of
// the message may have run concurrently.
var ErrClaimLost = errors.New("middleware: dedup claim lost: lease expired before it was renewed")

// heartbeat renews owner's claim on key every d.renewEvery() until stop is
// called; ctx is the message's context, whose cancellation the renewals
// ignore (a shutdown drains handlers, and their claims must live on).
func (d *dedup) heartbeat(ctx context.Context, key, owner string) *beat {
	b := &beat{stopc: make(chan struct{}), done: make(chan struct{})}
	ctx = context.WithoutCancel(ctx)
	every := d.renewEvery()
	go func() {
		defer close(b.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-b.stopc:
				return
			case <-t.C:
			}
			rctx, cancel := context.WithTimeout(ctx, min(d.cfg.StoreTimeout, every))
			held, err := d.store.Renew(rctx, key, owner, d.cfg.Lease)
			cancel()
			lost := err == nil && !held
			if lost {
				err = ErrClaimLost
			}
			if err != nil && b.err == nil {
				b.err = err
			}
			if lost {
				return
			}
		}
	}()
	return b
}

// stop ends the heartbeat, waits for its goroutine, and returns its first
// renewal failure.
func (b *beat) stop() error {
	close(b.stopc)
	<-b.done
	return b.err
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
