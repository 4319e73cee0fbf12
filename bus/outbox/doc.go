// Package outbox gives a Busline bus exactly-once effects with
// PostgreSQL (pgx v5): a transactional outbox, so that an event is
// published if and only if the transaction that wrote it commits, and an
// inbox, so that a handler's database effects happen once per message even
// when the broker delivers it again.
//
// # Outbox
//
// [Outbox.PublishTx] (or [Outbox.Publish] with the transaction in the
// context) writes messages, with the envelope [bus.Bus.Publish] would give
// them (ids, correlation, trace context), into the outbox table inside the
// caller's pgx or database/sql ([SQLTx]) transaction. Nothing reaches the
// broker until that transaction commits; a rollback leaves nothing.
//
//	tx, _ := pool.Begin(ctx)
//	_, _ = tx.Exec(ctx, `INSERT INTO orders ...`)
//	_ = ob.PublishTx(ctx, tx, "orders", msg)
//	_ = tx.Commit(ctx)
//
// # Relay
//
// [New] registers a relay with the bus ([bus.Bus.AddWorker]): it runs
// while [bus.Bus.Run] runs and stops in [bus.Bus.Close] before the
// publisher closes. It reads committed, unsent rows in batches of
// Config.BatchSize, publishes them through the bus's publisher (Kafka
// acks=all, RabbitMQ publisher confirms), and marks them sent in the same
// transaction that read them. It polls every Config.PollInterval when
// idle; writers send a NOTIFY that wakes it at once, but polling alone is
// what makes it correct (a notification can be lost).
//
// # Ordering
//
// Messages with the same partition key (ce_partitionkey) are published in
// the order their transactions committed, per topic. Ordering by
// transaction id, as watermill-sql does (rows of transactions older than
// pg_snapshot_xmin, by xid8), never skips a row of an open transaction,
// but orders by when transactions started, not when they committed: two
// writers of one key that commit in the reverse order of their start are
// published in the wrong order. So [Outbox.PublishTx] takes a
// transaction-scoped advisory lock per key before it inserts: writers of
// one key serialise from their outbox write to their commit, and the
// rows' identity column (assigned after the lock) follows commit order per
// key. A relay can then never see a row of a key while an earlier row of
// that key is uncommitted. The cost is that transactions writing the same
// key wait for each other; rows without a key take no lock and have no
// order.
//
// Several relays (one per process) share the table: each key hashes into
// one of Config.Buckets buckets, and a relay round holds the advisory lock
// of the buckets it relays (pg_try_advisory_xact_lock, never waiting), so
// one bucket is relayed by one relay at a time, in id order, and its rows
// are marked sent before the lock is released. Rows locked with
// FOR UPDATE SKIP LOCKED alone would let a second relay send a key's later
// row while the first still sends its earlier one.
//
// # Why not watermill-sql
//
// watermill-sql v4 (with Watermill's forwarder component) was checked for
// the relay and is used only as a benchmark baseline (docs/benchmarks.md):
// its PostgreSQL schema orders rows by transaction id, which is start
// order, not commit order per key (see Ordering); its consumer group reads
// its offsets row FOR UPDATE, so a second relay waits instead of sharing
// the work; the forwarder wraps each message in an envelope of its own and
// moves one message at a time through a router; and its subscriber's
// transaction-in-context (sql.TxFromContext) gives an inbox only for
// messages that come from SQL, not from Kafka or RabbitMQ.
//
// # Delivery
//
// At least once, with duplicates only after a crash: a relay that
// published a batch and died before its marks committed leaves the rows
// unsent, and the next round publishes them again. A row the broker keeps
// refusing is retried every Config.RetryInterval and holds back the rest
// of its bucket; the relay logs each failure.
//
// # Retention
//
// Sent rows keep their sent_at for Config.Retention (24h by default),
// then the relay deletes them (every Config.CleanupInterval); set a
// negative Retention to delete rows as they are sent. Inbox rows are kept
// for Config.InboxRetention (7 days by default).
//
// # Inbox
//
// [Outbox.Inbox] wraps a handler: it opens a transaction, inserts
// (group, message id) into the inbox table with ON CONFLICT DO NOTHING,
// runs the handler with the transaction in its context ([TxFromContext];
// [Outbox.Publish] writes into it), and commits all together. A duplicate
// finds the row and is acked with no effect. It needs no lease: the row
// lock of the uncommitted insert makes a concurrent duplicate wait. It has
// the shape of the typed adapters of package handlers and composes with
// them: ob.Inbox("billing", handlers.Event(reg, fn)), where fn publishes
// with handlers.Publish(ctx, ob, reg, topic, v) into the same transaction.
//
// # Shutdown
//
// [bus.Bus.Close] cancels the relay first; a round in flight finishes
// (bounded by 30s) so that what it published is marked sent.
package outbox
