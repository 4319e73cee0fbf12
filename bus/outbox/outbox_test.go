package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/stdlib"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/bus/outbox"
	"github.com/busline/busline/handlers"
	"github.com/busline/busline/internal/testserver"
	"github.com/busline/busline/middleware"
	"github.com/busline/busline/schema"
)

// An Outbox is a handlers.Publisher: handlers.Publish writes typed events
// into the handler's transaction.
var _ handlers.Publisher = (*outbox.Outbox)(nil)

// A message written in a committed transaction (pgx, database/sql, or the
// transaction in ctx) reaches the broker with its full envelope; one
// written in a rolled-back transaction never does.
func TestOutboxPublishTx(t *testing.T) {
	p := pool(t)
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	b, err := bus.New(bus.Config{}, quiet, bus.WithTracerProvider(tp))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	hook, waitRelayed := waitRelayed()
	o := newOutbox(t, b, p, outbox.Config{OnRelayed: hook})
	topic := bustest.Name("orders")
	ch := collect(t, b, topic)
	run(t, b)

	ctx, span := tp.Tracer("test").Start(context.Background(), "checkout")
	defer span.End()
	ctx = middleware.ContextWithCorrelation(ctx, "corr-1", "cause-1")

	tx, err := p.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.PublishTx(ctx, tx, topic, message.NewMessage("rolled-back", []byte("no"))); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	tx, err = p.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m := message.NewMessage("pgx", []byte("payload-pgx"))
	m.Metadata.Set(schema.KeyPartitionKey, "k1")
	if err := o.PublishTx(ctx, tx, topic, m); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	db := stdlib.OpenDBFromPool(p)
	defer db.Close()
	stx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.PublishTx(ctx, outbox.SQLTx(stx), topic, message.NewMessage("sql", []byte("payload-sql"))); err != nil {
		t.Fatal(err)
	}
	if err := stx.Commit(); err != nil {
		t.Fatal(err)
	}

	if err := o.Publish(ctx, topic, message.NewMessage("none", nil)); !errors.Is(err, outbox.ErrNoTx) {
		t.Fatalf("Publish without a transaction: %v, want ErrNoTx", err)
	}
	tx, err = p.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Publish(outbox.ContextWithTx(ctx, tx), topic, message.NewMessage("ctx", []byte("payload-ctx"))); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	got := map[string]*message.Message{}
	for range 3 {
		m := receive(t, ch)
		got[m.UUID] = m
	}
	waitRelayed(t, 3)
	traceID := span.SpanContext().TraceID().String()
	for _, id := range []string{"pgx", "sql", "ctx"} {
		m := got[id]
		if m == nil {
			t.Fatalf("message %s not delivered; got %v", id, got)
		}
		md := m.Metadata
		if md[schema.KeyID] != id || md[schema.KeyCorrelationID] != "corr-1" || md[schema.KeyCausationID] != "cause-1" {
			t.Errorf("%s: envelope %v", id, md)
		}
		if string(m.Payload) != "payload-"+id {
			t.Errorf("%s: payload %q", id, m.Payload)
		}
		if tpHdr := md["traceparent"]; !strings.Contains(tpHdr, traceID) {
			t.Errorf("%s: traceparent %q does not carry the writer's trace %s", id, tpHdr, traceID)
		}
	}
	if k := got["pgx"].Metadata[schema.KeyPartitionKey]; k != "k1" {
		t.Errorf("partition key %q", k)
	}
	table := o.Config().Table
	var rows, unsent int
	if err := p.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE sent_at IS NULL) FROM `+table).Scan(&rows, &unsent); err != nil {
		t.Fatal(err)
	}
	if rows != 3 || unsent != 0 {
		t.Errorf("outbox holds %d rows, %d unsent; want 3 and 0", rows, unsent)
	}
}

// Validate lists every problem at once.
func TestOutboxConfigValidate(t *testing.T) {
	err := outbox.Config{Table: "x;drop", InboxTable: "a b", BatchSize: -1, Buckets: -2,
		PollInterval: -1, RetryInterval: -1, InboxRetention: -1, CleanupInterval: -1}.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, f := range []string{"Table", "InboxTable", "BatchSize", "Buckets", "PollInterval", "RetryInterval", "InboxRetention", "CleanupInterval"} {
		if !strings.Contains(err.Error(), "outbox: "+f+" ") {
			t.Errorf("error does not name %s: %v", f, err)
		}
	}
	if err := (outbox.Config{}).Validate(); err != nil {
		t.Errorf("zero config: %v", err)
	}
	if _, err := outbox.New(nil, nil, outbox.Config{BatchSize: -1}); err == nil ||
		!strings.Contains(err.Error(), "nil bus") || !strings.Contains(err.Error(), "nil pool") || !strings.Contains(err.Error(), "BatchSize") {
		t.Errorf("New: %v", err)
	}
}

// Eight writer transactions take their transaction ids in one order and
// commit in another: per key, the events reach Kafka in commit order (an
// order by transaction id would give the start order).
func TestOutboxOrderPerKey(t *testing.T) {
	p := pool(t)
	addrs := testserver.Kafka(t, 4)
	b := kafkaBus(t, addrs)
	hook, waitRelayed := waitRelayed()
	o := newOutbox(t, b, p, outbox.Config{OnRelayed: hook, BatchSize: 7})
	topic := bustest.Name("ordered")
	run(t, b)
	ctx := bustest.Context(t, 90*time.Second)

	const writers, rounds = 8, 6
	keys := []string{"even", "odd", "all"}
	want := map[string][]string{}
	rng := rand.New(rand.NewPCG(1, 2))
	total := 0
	for r := range rounds {
		turn := make([]chan struct{}, writers)
		done := make([]chan struct{}, writers)
		for i := range turn {
			turn[i], done[i] = make(chan struct{}), make(chan struct{})
		}
		order := rng.Perm(writers) // order[k] is the k-th writer to commit
		var started sync.WaitGroup
		errc := make(chan error, writers)
		for w := range writers {
			started.Add(1)
			go func() {
				err := func() error {
					tx, err := p.Begin(ctx)
					if err != nil {
						started.Done()
						return err
					}
					defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
					// Take a transaction id now, in writer order.
					var xid string
					if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&xid); err != nil {
						started.Done()
						return err
					}
					started.Done()
					<-turn[w]
					var msgs []*message.Message
					for _, k := range []string{[]string{"even", "odd"}[w%2], "all"} {
						m := message.NewMessage(fmt.Sprintf("r%d-w%d-%s", r, w, k), nil)
						m.Metadata.Set(schema.KeyPartitionKey, k)
						msgs = append(msgs, m)
					}
					if err := o.PublishTx(ctx, tx, topic, msgs...); err != nil {
						return err
					}
					return tx.Commit(ctx)
				}()
				if err != nil {
					errc <- err
					return
				}
				close(done[w])
			}()
			started.Wait() // writer w has its xid before writer w+1 starts
		}
		// Each writer commits after the one before it in order did.
		committed := order
		for _, w := range order {
			close(turn[w])
			select {
			case <-done[w]:
			case err := <-errc:
				t.Fatal(err)
			}
		}
		for _, w := range committed {
			k := []string{"even", "odd"}[w%2]
			want[k] = append(want[k], fmt.Sprintf("r%d-w%d-%s", r, w, k))
			want["all"] = append(want["all"], fmt.Sprintf("r%d-w%d-all", r, w))
			total += 2
		}
	}
	waitRelayed(t, total)
	recs := readKafka(t, ctx, addrs, topic, total)
	got := map[string][]string{}
	for _, r := range recs {
		got[r.key] = append(got[r.key], r.id)
	}
	for _, k := range keys {
		if fmt.Sprint(got[k]) != fmt.Sprint(want[k]) {
			t.Errorf("key %s:\n got  %v\n want %v (commit order)", k, got[k], want[k])
		}
	}
}

// Two relays (two buses, as in two processes) on one table send every row
// exactly once, each key in order.
func TestOutboxSeveralRelays(t *testing.T) {
	p := pool(t)
	addrs := testserver.Kafka(t, 4)
	obTable, ibTable := tables(t, p)
	var counts [2]int
	var mu sync.Mutex
	hook, waitRelayed := waitRelayed()
	var obs [2]*outbox.Outbox
	for i := range 2 {
		b := kafkaBus(t, addrs)
		obs[i] = newOutbox(t, b, p, outbox.Config{Table: obTable, InboxTable: ibTable, BatchSize: 20, OnRelayed: func(ri outbox.RelayedInfo) {
			mu.Lock()
			counts[i] += ri.Messages
			mu.Unlock()
			hook(ri)
		}})
		run(t, b)
	}
	ctx := bustest.Context(t, 90*time.Second)
	topic := bustest.Name("shared")
	const keys, perKey = 40, 25
	var wg sync.WaitGroup
	errc := make(chan error, keys)
	for k := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perKey {
				tx, err := p.Begin(ctx)
				if err != nil {
					errc <- err
					return
				}
				m := message.NewMessage(fmt.Sprintf("k%d-%03d", k, i), nil)
				m.Metadata.Set(schema.KeyPartitionKey, fmt.Sprintf("k%d", k))
				if err := obs[i%2].PublishTx(ctx, tx, topic, m); err != nil {
					errc <- err
					return
				}
				if err := tx.Commit(ctx); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	const total = keys * perKey
	waitRelayed(t, total)
	recs := readKafka(t, ctx, addrs, topic, total)
	seen := map[string]bool{}
	last := map[string]string{}
	for _, r := range recs {
		if seen[r.id] {
			t.Errorf("%s sent twice", r.id)
		}
		seen[r.id] = true
		if r.id <= last[r.key] {
			t.Errorf("key %s: %s after %s", r.key, r.id, last[r.key])
		}
		last[r.key] = r.id
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("relay 1 sent %d, relay 2 sent %d of %d", counts[0], counts[1], total)
	if counts[0]+counts[1] != total {
		t.Errorf("relays sent %d+%d, want %d", counts[0], counts[1], total)
	}
}

// A second transaction writing a key waits at PublishTx until the first
// one holding that key ends, so the id order of a key's rows is their
// commit order even when the second transaction would commit first.
func TestOutboxKeyLockWaits(t *testing.T) {
	p := pool(t)
	b := memoryBus(t)
	hook, waitRelayed := waitRelayed()
	o := newOutbox(t, b, p, outbox.Config{OnRelayed: hook})
	topic := bustest.Name("locked")
	ch := collect(t, b, topic)
	run(t, b)
	ctx := bustest.Context(t, 30*time.Second)
	keyed := func(id string) *message.Message {
		m := message.NewMessage(id, nil)
		m.Metadata.Set(schema.KeyPartitionKey, "k")
		return m
	}
	txA, err := p.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = txA.Rollback(ctx) }()
	if err := o.PublishTx(ctx, txA, topic, keyed("A")); err != nil {
		t.Fatal(err)
	}
	txB, err := p.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = txB.Rollback(ctx) }()
	var pidB uint32
	if err := txB.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pidB); err != nil {
		t.Fatal(err)
	}
	written := make(chan error, 1)
	go func() { written <- o.PublishTx(ctx, txB, topic, keyed("B")) }()
	// Wait until B waits for A's lock.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		var waiting bool
		if err := p.QueryRow(ctx, `SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1`, int32(pidB)).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting {
			break
		}
		select {
		case err := <-written:
			t.Fatalf("B wrote key k while A holds it (err %v)", err)
		case <-tick.C:
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
	if err := txA.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-written; err != nil {
		t.Fatal(err)
	}
	if err := txB.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if a, b := receive(t, ch).UUID, receive(t, ch).UUID; a != "A" || b != "B" {
		t.Errorf("order %s, %s; want A, B", a, b)
	}
	waitRelayed(t, 2)
}

// The same message delivered three times (a redelivery, a replay) changes
// the business table once and writes its outbox message once; a handler
// failure rolls back its effects and the retry does them once.
func TestInboxDuplicates(t *testing.T) {
	p := pool(t)
	b := memoryBus(t)
	hook, waitRelayed := waitRelayed()
	o := newOutbox(t, b, p, outbox.Config{OnRelayed: hook})
	ctx := bustest.Context(t, 60*time.Second)
	effects := o.Config().Table + "_effects"
	if _, err := p.Exec(ctx, `CREATE TABLE `+effects+` (id text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = p.Exec(context.Background(), `DROP TABLE IF EXISTS `+effects) })
	in, out := bustest.Name("in"), bustest.Name("out")
	outCh := collect(t, b, out)
	var mu sync.Mutex
	calls := map[string]int{}
	handled := make(chan string, 16)
	h := o.Inbox("billing", func(ctx context.Context, msg *message.Message) error {
		tx := outbox.TxFromContext(ctx)
		if _, err := tx.Exec(ctx, `INSERT INTO `+effects+` (id) VALUES ($1)`, msg.UUID); err != nil {
			return err
		}
		if err := o.Publish(ctx, out, message.NewMessage("out-"+msg.UUID, nil)); err != nil {
			return err
		}
		mu.Lock()
		calls[msg.UUID]++
		n := calls[msg.UUID]
		mu.Unlock()
		if msg.UUID == "flaky" && n == 1 {
			return errors.New("transient") // after the writes: they must roll back
		}
		return nil
	})
	err := b.Handle("billing", in, func(ctx context.Context, msg *message.Message) error {
		err := h(ctx, msg)
		if err == nil {
			handled <- msg.UUID
		}
		return err
	}, bus.HandlerStack(func(c *middleware.StackConfig) {
		c.Disable |= middleware.StepDedup
		c.Retry.InitialInterval = time.Millisecond
	}))
	if err != nil {
		t.Fatal(err)
	}
	run(t, b)
	for _, id := range []string{"once", "once", "once", "flaky"} {
		if err := b.Publish(ctx, in, message.NewMessage(id, []byte("x"))); err != nil {
			t.Fatal(err)
		}
	}
	for range 4 {
		select {
		case <-handled:
		case <-ctx.Done():
			t.Fatal("deliveries not handled")
		}
	}
	for _, id := range []string{"once", "flaky"} {
		var n int
		if err := p.QueryRow(ctx, `SELECT count(*) FROM `+effects+` WHERE id = $1`, id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Errorf("%s: %d effects, want 1", id, n)
		}
	}
	mu.Lock()
	if calls["once"] != 1 || calls["flaky"] != 2 {
		t.Errorf("handler calls %v, want once:1 flaky:2", calls)
	}
	mu.Unlock()
	waitRelayed(t, 2)
	got := map[string]bool{receive(t, outCh).UUID: true, receive(t, outCh).UUID: true}
	if !got["out-once"] || !got["out-flaky"] {
		t.Errorf("published %v", got)
	}
	var rows int
	if err := p.QueryRow(ctx, `SELECT count(*) FROM `+o.Config().Table).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 2 {
		t.Errorf("outbox holds %d rows, want 2", rows)
	}
}

// With a negative Retention rows are deleted as they are marked sent;
// with a positive one the relay's cleanup deletes sent outbox rows and
// inbox rows past their retention.
func TestOutboxRetention(t *testing.T) {
	p := pool(t)
	ctx := bustest.Context(t, 30*time.Second)
	write := func(o *outbox.Outbox, topic string, n int) {
		t.Helper()
		tx, err := p.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if err := o.PublishTx(ctx, tx, topic, message.NewMessage(fmt.Sprintf("m%d", i), nil)); err != nil {
				t.Fatal(err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	count := func(table string) int {
		t.Helper()
		var n int
		if err := p.QueryRow(ctx, `SELECT count(*) FROM `+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	t.Run("delete when sent", func(t *testing.T) {
		b := memoryBus(t)
		hook, waitRelayed := waitRelayed()
		o := newOutbox(t, b, p, outbox.Config{Retention: -1, OnRelayed: hook})
		run(t, b)
		write(o, bustest.Name("gone"), 5)
		waitRelayed(t, 5)
		if n := count(o.Config().Table); n != 0 {
			t.Errorf("%d rows left, want 0", n)
		}
	})

	t.Run("cleanup", func(t *testing.T) {
		b := memoryBus(t)
		hook, waitRelayed := waitRelayed()
		o := newOutbox(t, b, p, outbox.Config{Retention: time.Millisecond, InboxRetention: time.Hour,
			CleanupInterval: time.Millisecond, PollInterval: 5 * time.Millisecond, OnRelayed: hook})
		cfg := o.Config()
		if _, err := p.Exec(ctx, `INSERT INTO `+cfg.InboxTable+` (grp, id, created_at) VALUES
			('g', 'old', now() - interval '2 hours'), ('g', 'new', now())`); err != nil {
			t.Fatal(err)
		}
		run(t, b)
		write(o, bustest.Name("aged"), 5)
		waitRelayed(t, 5)
		// The relay deletes on its own schedule: wait for the condition.
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for count(cfg.Table) != 0 || count(cfg.InboxTable) != 1 {
			select {
			case <-tick.C:
			case <-ctx.Done():
				t.Fatalf("outbox rows %d (want 0), inbox rows %d (want 1)", count(cfg.Table), count(cfg.InboxTable))
			}
		}
		var id string
		if err := p.QueryRow(ctx, `SELECT id FROM `+cfg.InboxTable).Scan(&id); err != nil || id != "new" {
			t.Errorf("inbox kept %q (%v), want new", id, err)
		}
	})
}
