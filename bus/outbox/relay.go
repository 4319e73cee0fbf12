package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
)

// roundTimeout bounds one relay round once started: a round that Close
// interrupts still gets to mark what it published.
const roundTimeout = 30 * time.Second

// cleanupBatch is how many rows one cleanup statement deletes at most.
const cleanupBatch = 10000

// relay is the bus worker: it moves committed rows to the broker until ctx
// ends. Errors are logged and retried after RetryInterval: a database or
// broker outage must not stop the bus.
func (o *Outbox) relay(ctx context.Context) error {
	wake := make(chan struct{}, 1)
	lctx, stopListen := context.WithCancel(ctx)
	var wg sync.WaitGroup
	if !o.cfg.DisableNotify {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o.listen(lctx, wake)
		}()
	}
	defer func() {
		stopListen()
		wg.Wait()
	}()

	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	nextCleanup := time.Now()
	for {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), roundTimeout)
		moved, err := o.round(rctx)
		if err == nil && !time.Now().Before(nextCleanup) {
			if err = o.cleanup(rctx); err == nil {
				nextCleanup = time.Now().Add(o.cfg.CleanupInterval)
			}
		}
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		wait := o.cfg.PollInterval
		switch {
		case err != nil:
			o.cfg.Logger.Warn("outbox: relay round failed, retrying", slog.String("table", o.cfg.Table),
				slog.Duration("retry_in", o.cfg.RetryInterval), slog.Any("error", err))
			wait = o.cfg.RetryInterval
		case moved:
			continue // maybe a backlog (or other buckets): go on at once
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
			if !timer.Stop() {
				<-timer.C
			}
		case <-timer.C:
		}
	}
}

// listen holds a connection that LISTENs on the wake-up channel and
// signals wake for each notification, until ctx ends. Lost connections
// are opened again after RetryInterval; meanwhile polling carries on.
func (o *Outbox) listen(ctx context.Context, wake chan<- struct{}) {
	for ctx.Err() == nil {
		err := o.listenOnce(ctx, wake)
		if ctx.Err() != nil {
			return
		}
		o.cfg.Logger.Warn("outbox: listen for wake-ups failed, polling only until it is back",
			slog.String("table", o.cfg.Table), slog.Any("error", err))
		t := time.NewTimer(o.cfg.RetryInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (o *Outbox) listenOnce(ctx context.Context, wake chan<- struct{}) error {
	pc, err := o.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	// A connection left listening must not go back to the pool.
	conn := pc.Hijack()
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+o.channel); err != nil {
		return err
	}
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		select {
		case wake <- struct{}{}:
		default:
		}
	}
}

// row is one outbox row as the relay reads it.
type row struct {
	id       int64
	topic    string
	uuid     string
	metadata []byte
	payload  []byte
}

// round relays one batch: in one transaction it takes the buckets of the
// oldest unsent rows that no other relay holds (at most half of them, so
// that a second relay finds work), reads up to BatchSize unsent rows of
// those buckets in id order, publishes them through the bus (one call per
// topic, in that order) and marks them sent. It reports whether it moved
// any row: only a round that found nothing to do lets the relay wait.
func (o *Outbox) round(ctx context.Context) (moved bool, err error) {
	start := time.Now()
	tx, err := o.pool.BeginTx(ctx, pgx.TxOptions{})
	if err != nil {
		return false, fmt.Errorf("outbox: relay: begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	maxBuckets := (o.cfg.Buckets + 1) / 2
	rows, err := tx.Query(ctx, `SELECT b FROM (
	SELECT DISTINCT bucket AS b FROM (
		SELECT bucket FROM `+o.cfg.Table+` WHERE sent_at IS NULL ORDER BY id LIMIT $1
	) w
) d WHERE pg_try_advisory_xact_lock($2::int, b) LIMIT $3`, o.cfg.BatchSize, o.bucketNS, maxBuckets)
	if err != nil {
		return false, fmt.Errorf("outbox: relay: lock buckets: %w", err)
	}
	buckets, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return false, fmt.Errorf("outbox: relay: lock buckets: %w", err)
	}
	if len(buckets) == 0 {
		return false, tx.Commit(ctx)
	}
	// A statement of its own, so that its snapshot is taken after the
	// locks: it sees the marks of a relay that held a bucket before.
	rows, err = tx.Query(ctx, `SELECT id, topic, uuid, metadata, payload FROM `+o.cfg.Table+`
WHERE sent_at IS NULL AND bucket = ANY($1) ORDER BY id LIMIT $2`, buckets, o.cfg.BatchSize)
	if err != nil {
		return false, fmt.Errorf("outbox: relay: read: %w", err)
	}
	batch := make([]row, 0, o.cfg.BatchSize)
	var r row
	_, err = pgx.ForEachRow(rows, []any{&r.id, &r.topic, &r.uuid, &r.metadata, &r.payload}, func() error {
		batch = append(batch, r)
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("outbox: relay: read: %w", err)
	}
	if len(batch) == 0 {
		return false, tx.Commit(ctx)
	}
	if err := o.publish(ctx, batch); err != nil {
		return false, err
	}
	ids := make([]int64, len(batch))
	for i := range batch {
		ids[i] = batch[i].id
	}
	mark := `UPDATE ` + o.cfg.Table + ` SET sent_at = now() WHERE id = ANY($1)`
	if o.cfg.Retention < 0 {
		mark = `DELETE FROM ` + o.cfg.Table + ` WHERE id = ANY($1)`
	}
	if _, err := tx.Exec(ctx, mark, ids); err != nil {
		return false, fmt.Errorf("outbox: relay: mark %d sent: %w", len(ids), err)
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("outbox: relay: commit marks: %w", err)
	}
	if o.cfg.OnRelayed != nil {
		o.cfg.OnRelayed(RelayedInfo{Messages: len(batch), Duration: time.Since(start)})
	}
	return true, nil
}

// publish publishes batch through the bus, grouped by topic in the order
// of first appearance; within a topic the rows keep their order.
func (o *Outbox) publish(ctx context.Context, batch []row) error {
	var topics []string
	byTopic := make(map[string][]*message.Message, 1)
	for i := range batch {
		r := &batch[i]
		m := message.NewMessage(r.uuid, r.payload)
		if err := json.Unmarshal(r.metadata, &m.Metadata); err != nil {
			return fmt.Errorf("outbox: relay: decode metadata of row %d: %w", r.id, err)
		}
		if _, ok := byTopic[r.topic]; !ok {
			topics = append(topics, r.topic)
		}
		byTopic[r.topic] = append(byTopic[r.topic], m)
	}
	for _, t := range topics {
		if err := o.bus.Publish(ctx, t, byTopic[t]...); err != nil {
			return fmt.Errorf("outbox: relay: %w", err)
		}
	}
	return nil
}

// cleanup deletes sent outbox rows past Retention and inbox rows past
// InboxRetention, cleanupBatch rows per statement.
func (o *Outbox) cleanup(ctx context.Context) error {
	var stmts []string
	var ages []time.Duration
	if o.cfg.Retention > 0 {
		stmts = append(stmts, `DELETE FROM `+o.cfg.Table+` WHERE id IN (SELECT id FROM `+o.cfg.Table+`
WHERE sent_at < now() - $1::bigint * interval '1 millisecond' LIMIT `+fmt.Sprint(cleanupBatch)+`)`)
		ages = append(ages, o.cfg.Retention)
	}
	stmts = append(stmts, `DELETE FROM `+o.cfg.InboxTable+` WHERE (grp, id) IN (SELECT grp, id FROM `+o.cfg.InboxTable+`
WHERE created_at < now() - $1::bigint * interval '1 millisecond' LIMIT `+fmt.Sprint(cleanupBatch)+`)`)
	ages = append(ages, o.cfg.InboxRetention)
	var errs []error
	for i, s := range stmts {
		for {
			tag, err := o.pool.Exec(ctx, s, ages[i].Milliseconds())
			if err != nil {
				errs = append(errs, fmt.Errorf("outbox: cleanup: %w", err))
				break
			}
			if tag.RowsAffected() < cleanupBatch {
				break
			}
		}
	}
	return errors.Join(errs...)
}
