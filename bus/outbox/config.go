package outbox

import (
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"time"
)

// Config configures [New]. Zero fields mean the documented defaults.
type Config struct {
	// Table is the outbox table, optionally schema-qualified
	// ("infra.outbox"); letters, digits and underscores only.
	// Zero: "busline_outbox".
	Table string
	// InboxTable is the inbox table of [Outbox.Inbox], same rules.
	// Zero: "busline_inbox".
	InboxTable string

	// BatchSize is the most rows one relay round moves to the broker (and
	// publishes in one call per topic). Zero: 100.
	BatchSize int
	// Buckets is how many buckets the keys of messages are hashed into.
	// One relay at a time owns a bucket while it relays its rows, so
	// relays in several processes share the work without sending a row
	// twice or out of order. Every process writing or relaying one table
	// must use the same value; change it only with an empty backlog.
	// Zero: 16.
	Buckets int
	// PollInterval is how long an idle relay waits before it looks at the
	// table again when no notification woke it earlier. Polling is what
	// makes the relay correct; notifications only cut the latency.
	// Zero: 1s.
	PollInterval time.Duration
	// RetryInterval is how long the relay waits after a failed round
	// (database or broker unreachable) before it tries again. Zero: 1s.
	RetryInterval time.Duration
	// DisableNotify stops writers from sending a NOTIFY with each
	// transaction that writes the outbox, and relays from listening for
	// it: the relay then finds new rows by polling only (after
	// PollInterval). NOTIFY takes a database-wide lock at commit, which
	// serialises the commits of many concurrent writers; set this under
	// heavy write loads, and behind PgBouncer in transaction pooling mode.
	// Zero: notifications on.
	DisableNotify bool
	// DisableRelay makes [New] register no relay with the bus: this
	// process only writes the outbox, and another one relays it.
	DisableRelay bool

	// Retention is how long sent rows stay in the outbox table (for
	// inspection, or to send one again by clearing its sent_at) before
	// the relay deletes them. Negative: a row is deleted as it is marked
	// sent. Zero: 24h.
	Retention time.Duration
	// InboxRetention is how long the inbox remembers a handled message:
	// a copy that arrives later is handled again. Make it longer than the
	// longest time a message can take to come back (redelivery, a replay
	// from the dead-letter topic). Zero: 7 days (NServiceBus's default).
	InboxRetention time.Duration
	// CleanupInterval is how often the relay deletes rows past their
	// retention, from both tables. Zero: 1 minute.
	CleanupInterval time.Duration

	// Logger receives the relay's warnings (failed rounds, lost
	// listener). Zero: slog.Default().
	Logger *slog.Logger

	// OnRelayed, when set, is called after each batch the relay published
	// and marked sent. It observes only; it runs on the relay's goroutine,
	// so it must be quick.
	OnRelayed func(RelayedInfo)
	// OnDuplicate, when set, is called when [Outbox.Inbox] finds a
	// message it handled before and acks it with no effect. It observes
	// only and must be quick.
	OnDuplicate func(DuplicateInfo)
}

// DuplicateInfo describes a message the inbox found it had handled, for
// [Config].OnDuplicate.
type DuplicateInfo struct {
	// Group is the group given to [Outbox.Inbox].
	Group string
	// MessageID is the message's UUID (its CloudEvents id).
	MessageID string
}

// RelayedInfo describes one batch the relay moved to the broker, for
// [Config].OnRelayed.
type RelayedInfo struct {
	// Messages is how many rows the batch held.
	Messages int
	// Duration is the time from reading the rows to the commit of their
	// marks, broker publish included.
	Duration time.Duration
}

// Defaults of [Config] fields left zero.
const (
	DefaultTable           = "busline_outbox"
	DefaultInboxTable      = "busline_inbox"
	DefaultBatchSize       = 100
	DefaultBuckets         = 16
	DefaultPollInterval    = time.Second
	DefaultRetryInterval   = time.Second
	DefaultRetention       = 24 * time.Hour
	DefaultInboxRetention  = 7 * 24 * time.Hour
	DefaultCleanupInterval = time.Minute
)

// maxBuckets bounds Config.Buckets: a bucket is one advisory lock.
const maxBuckets = 1 << 16

var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`)

// Validate reports every problem of c at once, joined with errors.Join.
func (c Config) Validate() error {
	var errs []error
	if c.Table != "" && !identifier.MatchString(c.Table) {
		errs = append(errs, fmt.Errorf("outbox: Table %q is not a plain (optionally schema-qualified) identifier", c.Table))
	}
	if c.InboxTable != "" && !identifier.MatchString(c.InboxTable) {
		errs = append(errs, fmt.Errorf("outbox: InboxTable %q is not a plain (optionally schema-qualified) identifier", c.InboxTable))
	}
	if c.BatchSize < 0 {
		errs = append(errs, fmt.Errorf("outbox: BatchSize %d is negative", c.BatchSize))
	}
	if c.Buckets < 0 || c.Buckets > maxBuckets {
		errs = append(errs, fmt.Errorf("outbox: Buckets %d is not in [0, %d]", c.Buckets, maxBuckets))
	}
	if c.PollInterval < 0 {
		errs = append(errs, fmt.Errorf("outbox: PollInterval %v is negative", c.PollInterval))
	}
	if c.RetryInterval < 0 {
		errs = append(errs, fmt.Errorf("outbox: RetryInterval %v is negative", c.RetryInterval))
	}
	if c.InboxRetention < 0 {
		errs = append(errs, fmt.Errorf("outbox: InboxRetention %v is negative", c.InboxRetention))
	}
	if c.CleanupInterval < 0 {
		errs = append(errs, fmt.Errorf("outbox: CleanupInterval %v is negative", c.CleanupInterval))
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	if c.Table == "" {
		c.Table = DefaultTable
	}
	if c.InboxTable == "" {
		c.InboxTable = DefaultInboxTable
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.Buckets == 0 {
		c.Buckets = DefaultBuckets
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.RetryInterval == 0 {
		c.RetryInterval = DefaultRetryInterval
	}
	if c.Retention == 0 {
		c.Retention = DefaultRetention
	}
	if c.InboxRetention == 0 {
		c.InboxRetention = DefaultInboxRetention
	}
	if c.CleanupInterval == 0 {
		c.CleanupInterval = DefaultCleanupInterval
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}
