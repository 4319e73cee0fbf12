package outbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/schema"
)

// Execer runs one SQL statement in the caller's transaction: pgx.Tx has
// it, and [SQLTx] adapts a database/sql transaction.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// SQLTx adapts a database/sql transaction on a PostgreSQL driver (pgx's
// stdlib, for instance) to [Execer], for [Outbox.PublishTx].
func SQLTx(tx *sql.Tx) Execer { return sqlTx{tx} }

type sqlTx struct{ tx *sql.Tx }

func (t sqlTx) Exec(ctx context.Context, query string, args ...any) (pgconn.CommandTag, error) {
	if _, err := t.tx.ExecContext(ctx, query, args...); err != nil {
		return pgconn.CommandTag{}, err
	}
	return pgconn.CommandTag{}, nil
}

// Outbox writes messages into a PostgreSQL table inside the caller's
// transaction and relays the committed ones to the bus's broker; its
// [Outbox.Inbox] runs handlers exactly once per message in a transaction
// of their own. Its methods are safe for concurrent use.
type Outbox struct {
	bus  *bus.Bus
	pool *pgxpool.Pool
	cfg  Config

	keyNS, bucketNS int32  // advisory lock namespaces
	channel         string // NOTIFY channel, quoted for LISTEN
	channelName     string // the same, unquoted, for pg_notify
	inboxSQL        string
}

// ErrNoTx is returned by [Outbox.Publish] when ctx carries no transaction.
var ErrNoTx = errors.New("outbox: no transaction in the context (use ContextWithTx, Outbox.PublishTx or a handler wrapped by Outbox.Inbox)")

// New returns an outbox on the tables of cfg in pool's database, whose
// relay publishes through b. Unless cfg.DisableRelay is set it registers
// the relay with b ([bus.Bus.AddWorker], named "outbox <table>"), so that
// [bus.Bus.Run] runs it and [bus.Bus.Close] stops it: call New before Run.
// Create the tables with [Outbox.Migrate] first. New reports every problem
// of cfg at once.
func New(b *bus.Bus, pool *pgxpool.Pool, cfg Config) (*Outbox, error) {
	var errs []error
	if b == nil {
		errs = append(errs, errors.New("outbox: nil bus"))
	}
	if pool == nil {
		errs = append(errs, errors.New("outbox: nil pool"))
	}
	if err := cfg.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	o := &Outbox{
		bus:         b,
		pool:        pool,
		cfg:         cfg,
		keyNS:       hash32(cfg.Table + "#key"),
		bucketNS:    hash32(cfg.Table + "#bucket"),
		channelName: cfg.Table + "_wakeup",
		inboxSQL:    `INSERT INTO ` + cfg.InboxTable + ` (grp, id) VALUES ($1, $2) ON CONFLICT DO NOTHING`,
	}
	o.channel = pgx.Identifier{o.channelName}.Sanitize()
	if !cfg.DisableRelay {
		if err := b.AddWorker("outbox "+cfg.Table, bus.WorkerFunc(o.relay)); err != nil {
			return nil, fmt.Errorf("outbox: register relay: %w", err)
		}
	}
	return o, nil
}

// Config returns the outbox's configuration with defaults filled in.
func (o *Outbox) Config() Config { return o.cfg }

// Migrate creates the outbox and inbox tables and their indexes when they
// do not exist. It is idempotent.
func (o *Outbox) Migrate(ctx context.Context) error {
	t, it := o.cfg.Table, o.cfg.InboxTable
	stmts := []string{
		`CREATE TABLE IF NOT EXISTS ` + t + ` (
	id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	bucket     integer     NOT NULL,
	topic      text        NOT NULL,
	key        text        NOT NULL,
	uuid       text        NOT NULL,
	metadata   jsonb       NOT NULL,
	payload    bytea       NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now(),
	sent_at    timestamptz
)`,
		`CREATE INDEX IF NOT EXISTS ` + indexName(t, "unsent") + ` ON ` + t + ` (id) INCLUDE (bucket) WHERE sent_at IS NULL`,
		`CREATE INDEX IF NOT EXISTS ` + indexName(t, "sent_at") + ` ON ` + t + ` (sent_at) WHERE sent_at IS NOT NULL`,
		`CREATE TABLE IF NOT EXISTS ` + it + ` (
	grp        text        NOT NULL,
	id         text        NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (grp, id)
)`,
		`CREATE INDEX IF NOT EXISTS ` + indexName(it, "created_at") + ` ON ` + it + ` (created_at)`,
	}
	for _, s := range stmts {
		if _, err := o.pool.Exec(ctx, s); err != nil {
			return fmt.Errorf("outbox: migrate: %w", err)
		}
	}
	return nil
}

func indexName(table, suffix string) string {
	if i := strings.LastIndexByte(table, '.'); i >= 0 {
		table = table[i+1:]
	}
	return table + "_" + suffix + "_idx"
}

func hash32(s string) int32 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(s))
	return int32(h.Sum32())
}

// txKey is the context key of the transaction ContextWithTx stores.
type txKey struct{}

// ContextWithTx returns a copy of ctx carrying tx, the transaction
// [Outbox.Publish] writes in. [Outbox.Inbox] does it for its handlers.
func ContextWithTx(ctx context.Context, tx Execer) context.Context {
	return context.WithValue(ctx, txKey{}, tx)
}

// TxFromContext returns the pgx transaction ctx carries (the one of a
// handler wrapped by [Outbox.Inbox]), or nil when it carries none or a
// transaction of another kind.
func TxFromContext(ctx context.Context) pgx.Tx {
	tx, _ := ctx.Value(txKey{}).(pgx.Tx)
	return tx
}

// Publish writes msgs for topic into the outbox in the transaction ctx
// carries (see [ContextWithTx]; inside a handler wrapped by
// [Outbox.Inbox], the handler's transaction); it returns [ErrNoTx] when
// ctx carries none. Otherwise it is [Outbox.PublishTx]. With Publish, an
// Outbox is a handlers.Publisher: handlers.Publish(ctx, o, reg, topic, v)
// writes a typed event into the handler's transaction.
func (o *Outbox) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	tx, _ := ctx.Value(txKey{}).(Execer)
	if tx == nil {
		return ErrNoTx
	}
	return o.PublishTx(ctx, tx, topic, msgs...)
}

// PublishTx writes msgs for topic into the outbox in tx, the caller's
// transaction: they reach the broker after tx commits, and never when it
// rolls back. Each message gets the envelope [bus.Bus.Publish] would give
// it now ([bus.Bus.Stamp]: ids, the correlation of ctx, the trace context
// of ctx as its creation context), stored with it.
//
// Messages with the same partition key (metadata ce_partitionkey) reach
// the broker in the order their transactions committed, and in the order
// written within one transaction. To make that order well defined,
// PublishTx takes a transaction-scoped lock per key: a second transaction
// writing the same key waits at PublishTx until the first one ends. Write
// all keyed messages of a transaction in one PublishTx call (it locks
// keys in a fixed order), or lock keys in the same order in every
// transaction, else two transactions can deadlock (PostgreSQL then aborts
// one). Messages without a key take no lock and have no order.
func (o *Outbox) PublishTx(ctx context.Context, tx Execer, topic string, msgs ...*message.Message) error {
	if tx == nil {
		return errors.New("outbox: nil transaction")
	}
	if topic == "" {
		return errors.New("outbox: empty topic")
	}
	if len(msgs) == 0 {
		return nil
	}
	for _, m := range msgs {
		if m == nil {
			return errors.New("outbox: nil message")
		}
	}
	o.bus.Stamp(ctx, msgs...)

	nb := uint32(o.cfg.Buckets)
	args := make([]any, 0, 6*len(msgs)+1)
	var hashes []int32
	var ins strings.Builder
	ins.WriteString(`INSERT INTO `)
	ins.WriteString(o.cfg.Table)
	ins.WriteString(` (bucket, topic, key, uuid, metadata, payload) VALUES `)
	for i, m := range msgs {
		key := m.Metadata[schema.KeyPartitionKey]
		var bucket uint32
		if key != "" {
			h := hash32(key)
			hashes = append(hashes, h)
			bucket = uint32(h) % nb
		} else {
			bucket = uint32(hash32(m.UUID)) % nb
		}
		md, err := json.Marshal(m.Metadata)
		if err != nil {
			return fmt.Errorf("outbox: encode metadata of %s: %w", m.UUID, err)
		}
		if i > 0 {
			ins.WriteByte(',')
		}
		n := len(args)
		ins.WriteString(`($`)
		for j := 1; j <= 6; j++ {
			if j > 1 {
				ins.WriteString(`,$`)
			}
			ins.WriteString(strconv.Itoa(n + j))
			if j == 5 {
				ins.WriteString(`::jsonb`)
			}
		}
		ins.WriteByte(')')
		args = append(args, int32(bucket), topic, key, m.UUID, string(md), payloadOf(m))
	}

	if len(hashes) > 0 || !o.cfg.DisableNotify {
		if err := o.lockKeys(ctx, tx, hashes); err != nil {
			return err
		}
	}
	if _, err := tx.Exec(ctx, ins.String(), args...); err != nil {
		return fmt.Errorf("outbox: write %d message(s) for %s: %w", len(msgs), topic, err)
	}
	return nil
}

// lockKeys takes the transaction-scoped lock of each key hash, in
// ascending order, and sends the wake-up notification (delivered at
// commit) unless it is disabled.
func (o *Outbox) lockKeys(ctx context.Context, tx Execer, hashes []int32) error {
	slices.Sort(hashes)
	hashes = slices.Compact(hashes)
	var q strings.Builder
	args := make([]any, 0, len(hashes)+2)
	q.WriteString(`SELECT `)
	if !o.cfg.DisableNotify {
		args = append(args, o.channelName)
		q.WriteString(`pg_notify($1, ''), `)
	}
	if len(hashes) == 0 {
		q.WriteString(`1`)
	} else {
		args = append(args, o.keyNS)
		fmt.Fprintf(&q, `(SELECT count(pg_advisory_xact_lock($%d::int, h)) FROM (VALUES `, len(args))
		for i, h := range hashes {
			if i > 0 {
				q.WriteByte(',')
			}
			args = append(args, h)
			fmt.Fprintf(&q, `($%d::int)`, len(args))
		}
		q.WriteString(`) v(h))`)
	}
	if _, err := tx.Exec(ctx, q.String(), args...); err != nil {
		return fmt.Errorf("outbox: lock keys: %w", err)
	}
	return nil
}

func payloadOf(m *message.Message) []byte {
	if m.Payload == nil {
		return []byte{}
	}
	return m.Payload
}
