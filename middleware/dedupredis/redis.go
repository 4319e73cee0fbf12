// Package dedupredis is a Redis [middleware.DedupStore] for
// [middleware.Dedup], shared by every process that uses the same Redis.
//
// A claim is a key holding "c:" and the owner token, set with
// SET NX PX lease semantics; a renewal (the heartbeat of a running handler)
// resets its PX while it still holds the caller's claim, or sets it again
// when it expired and nobody took it; a commit overwrites it with "done" and the TTL;
// a release deletes the key only while it still holds the caller's claim.
// Claim and release are Lua scripts, so each is one atomic round trip.
// Expiry is Redis's own: nothing to clean up.
package dedupredis

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/busline/busline/middleware"
)

// Config configures [New]. Zero fields mean the defaults.
type Config struct {
	// Prefix is prepended to every key. Zero means "busline:dedup:".
	Prefix string
}

// DefaultPrefix is Config.Prefix's default.
const DefaultPrefix = "busline:dedup:"

// Store is a Redis [middleware.DedupStore]. It is safe for concurrent use.
type Store struct {
	client redis.UniversalClient
	prefix string
}

var _ middleware.DedupStore = (*Store)(nil)

// New returns a Store on client. The client stays the caller's: closing
// it is the caller's job. New panics when client is nil.
func New(client redis.UniversalClient, cfg Config) *Store {
	if client == nil {
		panic("dedupredis: nil client")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	return &Store{client: client, prefix: cfg.Prefix}
}

const doneValue = "done"

// claimScript: KEYS[1] key; ARGV[1] claim value; ARGV[2] lease in ms.
// Returns 1 claimed, 2 done, 3 in progress.
var claimScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if v == 'done' then return 2 end
return 3
`)

// releaseScript: KEYS[1] key; ARGV[1] claim value. Deletes only our claim.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// renewScript: KEYS[1] key; ARGV[1] claim value; ARGV[2] lease in ms.
// Returns 1 when the claim is (again) the caller's, 0 when the key is done
// or another owner's.
var renewScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
`)

// Claim implements [middleware.DedupStore].
func (s *Store) Claim(ctx context.Context, key, owner string, lease time.Duration) (middleware.ClaimState, error) {
	n, err := claimScript.Run(ctx, s.client, []string{s.prefix + key}, "c:"+owner, millis(lease)).Int()
	if err != nil {
		return 0, fmt.Errorf("dedupredis: claim: %w", err)
	}
	switch n {
	case 1:
		return middleware.Claimed, nil
	case 2:
		return middleware.AlreadyDone, nil
	case 3:
		return middleware.InProgress, nil
	}
	return 0, fmt.Errorf("dedupredis: claim: unexpected script result %d", n)
}

// Renew implements [middleware.DedupStore].
func (s *Store) Renew(ctx context.Context, key, owner string, lease time.Duration) (bool, error) {
	n, err := renewScript.Run(ctx, s.client, []string{s.prefix + key}, "c:"+owner, millis(lease)).Int()
	if err != nil {
		return false, fmt.Errorf("dedupredis: renew: %w", err)
	}
	return n == 1, nil
}

// Commit implements [middleware.DedupStore].
func (s *Store) Commit(ctx context.Context, key string, ttl time.Duration) error {
	if err := s.client.Set(ctx, s.prefix+key, doneValue, time.Duration(millis(ttl))*time.Millisecond).Err(); err != nil {
		return fmt.Errorf("dedupredis: commit: %w", err)
	}
	return nil
}

// Release implements [middleware.DedupStore].
func (s *Store) Release(ctx context.Context, key, owner string) error {
	if err := releaseScript.Run(ctx, s.client, []string{s.prefix + key}, "c:"+owner).Err(); err != nil {
		return fmt.Errorf("dedupredis: release: %w", err)
	}
	return nil
}

// millis rounds d up to whole milliseconds, at least 1.
func millis(d time.Duration) int64 {
	return max(1, int64((d+time.Millisecond-1)/time.Millisecond))
}
