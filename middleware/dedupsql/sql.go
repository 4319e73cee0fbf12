// Package dedupsql is a PostgreSQL [middleware.DedupStore] for
// [middleware.Dedup] (pgx v5), shared by every process that uses the same
// database.
//
// One table holds a row per key: its claim owner, whether it is done, and
// when the row expires. A claim is one INSERT ... ON CONFLICT DO UPDATE that
// takes over the row only when it has expired, so concurrent claims have one
// winner; a renewal (the heartbeat of a running handler) moves the expiry of
// a row that still holds the caller's claim; a commit upserts the row as done with the TTL; a release deletes
// the row only while it still holds the caller's claim. Times come from the
// database clock. Expired rows are ignored, and deleted by [Store.Purge]:
// call it now and then (every few minutes) to keep the table small.
//
// Create the table with [Store.Migrate] before use.
package dedupsql

import (
	"context"
	"fmt"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/busline/busline/middleware"
)

// DB is what the store needs from a connection: *pgxpool.Pool, *pgx.Conn
// and pgx.Tx all have it. Use a pool for concurrent handlers.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Config configures [New]. Zero fields mean the defaults.
type Config struct {
	// Table is the table name, optionally schema-qualified
	// ("infra.dedup"); letters, digits and underscores only. Zero means
	// "busline_dedup".
	Table string
}

// DefaultTable is Config.Table's default.
const DefaultTable = "busline_dedup"

var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`)

// Store is a PostgreSQL [middleware.DedupStore]. It is safe for concurrent
// use when its DB is (a pool is).
type Store struct {
	db                                             DB
	table                                          string
	claimSQL, renewSQL, commitSQL, releaseSQL, ddl string
}

var _ middleware.DedupStore = (*Store)(nil)

// New returns a Store on db. It panics when db is nil or the table name is
// not a plain identifier.
func New(db DB, cfg Config) *Store {
	if db == nil {
		panic("dedupsql: nil DB")
	}
	if cfg.Table == "" {
		cfg.Table = DefaultTable
	}
	if !identifier.MatchString(cfg.Table) {
		panic(fmt.Sprintf("dedupsql: invalid table name %q", cfg.Table))
	}
	t := cfg.Table
	return &Store{
		db:    db,
		table: t,
		ddl: `CREATE TABLE IF NOT EXISTS ` + t + ` (
	key        text        PRIMARY KEY,
	owner      text        NOT NULL DEFAULT '',
	done       boolean     NOT NULL DEFAULT false,
	expires_at timestamptz NOT NULL
)`,
		// The conflict update fires only for an expired row, so exactly one
		// concurrent claim wins. The sub-select sees the row as it was
		// before this statement; NULL (a row inserted concurrently) reads
		// as in progress.
		claimSQL: `WITH ins AS (
	INSERT INTO ` + t + ` AS d (key, owner, done, expires_at)
	VALUES ($1, $2, false, now() + $3::bigint * interval '1 millisecond')
	ON CONFLICT (key) DO UPDATE
		SET owner = EXCLUDED.owner, done = false, expires_at = EXCLUDED.expires_at
		WHERE d.expires_at <= now()
	RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM ins), (SELECT done FROM ` + t + ` WHERE key = $1)`,
		renewSQL: `UPDATE ` + t + ` SET expires_at = now() + $3::bigint * interval '1 millisecond'
WHERE key = $1 AND owner = $2 AND NOT done`,
		commitSQL: `INSERT INTO ` + t + ` AS d (key, owner, done, expires_at)
VALUES ($1, '', true, now() + $2::bigint * interval '1 millisecond')
ON CONFLICT (key) DO UPDATE SET owner = '', done = true, expires_at = EXCLUDED.expires_at`,
		releaseSQL: `DELETE FROM ` + t + ` WHERE key = $1 AND owner = $2 AND NOT done`,
	}
}

// Migrate creates the table and its expiry index when they do not exist.
// It is idempotent.
func (s *Store) Migrate(ctx context.Context) error {
	if _, err := s.db.Exec(ctx, s.ddl); err != nil {
		return fmt.Errorf("dedupsql: migrate: %w", err)
	}
	idx := `CREATE INDEX IF NOT EXISTS ` + indexName(s.table) + ` ON ` + s.table + ` (expires_at)`
	if _, err := s.db.Exec(ctx, idx); err != nil {
		return fmt.Errorf("dedupsql: migrate: %w", err)
	}
	return nil
}

func indexName(table string) string {
	for i := len(table) - 1; i >= 0; i-- {
		if table[i] == '.' {
			table = table[i+1:]
			break
		}
	}
	return table + "_expires_at_idx"
}

// Purge deletes expired rows and reports how many.
func (s *Store) Purge(ctx context.Context) (int64, error) {
	tag, err := s.db.Exec(ctx, `DELETE FROM `+s.table+` WHERE expires_at <= now()`)
	if err != nil {
		return 0, fmt.Errorf("dedupsql: purge: %w", err)
	}
	return tag.RowsAffected(), nil
}

// Claim implements [middleware.DedupStore].
func (s *Store) Claim(ctx context.Context, key, owner string, lease time.Duration) (middleware.ClaimState, error) {
	var claimed bool
	var done *bool
	if err := s.db.QueryRow(ctx, s.claimSQL, key, owner, millis(lease)).Scan(&claimed, &done); err != nil {
		return 0, fmt.Errorf("dedupsql: claim: %w", err)
	}
	switch {
	case claimed:
		return middleware.Claimed, nil
	case done != nil && *done:
		return middleware.AlreadyDone, nil
	}
	return middleware.InProgress, nil
}

// Renew implements [middleware.DedupStore].
func (s *Store) Renew(ctx context.Context, key, owner string, lease time.Duration) (bool, error) {
	tag, err := s.db.Exec(ctx, s.renewSQL, key, owner, millis(lease))
	if err != nil {
		return false, fmt.Errorf("dedupsql: renew: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}

// Commit implements [middleware.DedupStore].
func (s *Store) Commit(ctx context.Context, key string, ttl time.Duration) error {
	if _, err := s.db.Exec(ctx, s.commitSQL, key, millis(ttl)); err != nil {
		return fmt.Errorf("dedupsql: commit: %w", err)
	}
	return nil
}

// Release implements [middleware.DedupStore].
func (s *Store) Release(ctx context.Context, key, owner string) error {
	if _, err := s.db.Exec(ctx, s.releaseSQL, key, owner); err != nil {
		return fmt.Errorf("dedupsql: release: %w", err)
	}
	return nil
}

// millis rounds d up to whole milliseconds, at least 1.
func millis(d time.Duration) int64 {
	return max(1, int64((d+time.Millisecond-1)/time.Millisecond))
}
