package outbox_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/bus/outbox"
	"github.com/busline/busline/internal/testserver"
	"github.com/busline/busline/middleware"
	"github.com/busline/busline/schema"
)

// The kill tests re-execute the test binary as a child process (TestMain
// runs runChild when childEnv is set), let it work, and SIGKILL it after a
// random number of the events it reports on stdout.
const (
	childEnv = "BUSLINE_OUTBOX_CHILD" // "outbox" or "inbox"
	kills    = 20
)

// child starts the test binary in mode with env, reads its event lines,
// and kills it with SIGKILL after n events. It returns the events seen
// and the duplicates the child's inbox reported ("d" lines) until then.
func killChild(t *testing.T, mode string, env []string, n int) (seen, dups int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), childEnv+"="+mode), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	for seen < n && sc.Scan() {
		if sc.Text() == "d" {
			dups++ // a duplicate: not a kill point
			continue
		}
		seen++
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	return seen, dups
}

// runChild is the child process's main. It works until killed.
func runChild() int {
	mode := os.Getenv(childEnv)
	if err := childMain(mode); err != nil {
		fmt.Fprintf(os.Stderr, "child %s: %v\n", mode, err)
		return 1
	}
	return 0
}

func childMain(mode string) error {
	ctx := context.Background()
	p, err := pgxpool.New(ctx, os.Getenv("KILL_DSN"))
	if err != nil {
		return err
	}
	defer p.Close()
	var cfg bus.Config
	switch mode {
	case "outbox":
		cfg = bus.Config{Broker: bus.BrokerKafka, Kafka: kafka.Config{Brokers: strings.Split(os.Getenv("KILL_KAFKA"), ",")}}
	case "inbox":
		cfg = bus.Config{Broker: bus.BrokerAMQP, Group: os.Getenv("KILL_GROUP"), AMQP: amqp.Config{URL: os.Getenv("KILL_AMQP")}}
	}
	b, err := bus.New(cfg, quiet)
	if err != nil {
		return err
	}
	out := bufio.NewWriter(os.Stdout)
	outMu := make(chan struct{}, 1)
	event := func(s string) {
		outMu <- struct{}{}
		fmt.Fprintln(out, s)
		_ = out.Flush()
		<-outMu
	}
	o, err := outbox.New(b, p, outbox.Config{
		Table: os.Getenv("KILL_OUTBOX"), InboxTable: os.Getenv("KILL_INBOX"), BatchSize: 10,
		DisableRelay: mode == "inbox",
		OnRelayed:    func(outbox.RelayedInfo) { event("r") },
		OnDuplicate:  func(outbox.DuplicateInfo) { event("d") },
	})
	if err != nil {
		return err
	}
	switch mode {
	case "outbox":
		go func() { _ = b.Run(ctx) }()
		topic, ledger := os.Getenv("KILL_TOPIC"), os.Getenv("KILL_LEDGER")
		base, _ := strconv.Atoi(os.Getenv("KILL_BASE"))
		for i := 0; ; i++ {
			id := strconv.Itoa(base + i)
			tx, err := p.Begin(ctx)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO `+ledger+` (id) VALUES ($1)`, id); err != nil {
				return err
			}
			m := message.NewMessage(id, []byte(id))
			m.Metadata.Set(schema.KeyPartitionKey, strconv.Itoa(i%8))
			if err := o.PublishTx(ctx, tx, topic, m); err != nil {
				return err
			}
			if i%4 == 3 {
				err = tx.Rollback(ctx)
			} else {
				err = tx.Commit(ctx)
			}
			if err != nil {
				return err
			}
			event("w")
		}
	case "inbox":
		// With KILL_BLOCK_AT=n, the n-th handled message's handler never
		// returns after the inbox committed: the kill then falls between
		// the commit and the ack for sure.
		blockAt, _ := strconv.Atoi(os.Getenv("KILL_BLOCK_AT"))
		handled := 0
		if err := b.Handle("effects", os.Getenv("KILL_TOPIC"), inboxHandler(o, os.Getenv("KILL_EFFECTS"), func() {
			handled++
			event("h")
			if handled == blockAt {
				<-make(chan struct{})
			}
		}),
			bus.HandlerStack(func(c *middleware.StackConfig) { c.Disable |= middleware.StepDedup })); err != nil {
			return err
		}
		return b.Run(ctx)
	}
	return fmt.Errorf("unknown mode %q", mode)
}

// inboxHandler records one effect per call in table effects inside the
// inbox transaction, and calls done after the inbox committed.
func inboxHandler(o *outbox.Outbox, effects string, done func()) bus.HandlerFunc {
	h := o.Inbox("effects", func(ctx context.Context, msg *message.Message) error {
		_, err := outbox.TxFromContext(ctx).Exec(ctx, `INSERT INTO `+effects+` (id) VALUES ($1)`, msg.UUID)
		return err
	})
	return func(ctx context.Context, msg *message.Message) error {
		err := h(ctx, msg)
		if err == nil {
			done()
		}
		return err
	}
}

// SIGKILL at 20 random points around the business commit and the relay's
// publish: every committed ledger row is published, no rolled-back one is,
// and duplicates are counted.
func TestOutboxKillAtomicity(t *testing.T) {
	p := pool(t)
	addrs := testserver.Kafka(t, 2)
	obTable, ibTable := tables(t, p)
	ledger := obTable + "_ledger"
	ctx := bustest.Context(t, 120*time.Second)
	if _, err := p.Exec(ctx, `CREATE TABLE `+ledger+` (id text PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = p.Exec(context.Background(), `DROP TABLE IF EXISTS `+ledger) })
	// Create the tables before the children race to.
	newOutbox(t, memoryBus(t), p, outbox.Config{Table: obTable, InboxTable: ibTable, DisableRelay: true})
	topic := bustest.Name("ledger")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 17))
	for k := range kills {
		env := []string{"KILL_DSN=" + testserver.PostgresDSN(t), "KILL_KAFKA=" + strings.Join(addrs, ","),
			"KILL_OUTBOX=" + obTable, "KILL_INBOX=" + ibTable, "KILL_TOPIC=" + topic, "KILL_LEDGER=" + ledger,
			"KILL_BASE=" + strconv.Itoa(k*1_000_000)}
		if got, _ := killChild(t, "outbox", env, 1+rng.IntN(40)); got == 0 {
			t.Fatalf("child %d reported nothing before it ended", k)
		}
	}

	// What the children left unsent, a relay of this process sends.
	var unsent int
	if err := p.QueryRow(ctx, `SELECT count(*) FROM `+obTable+` WHERE sent_at IS NULL`).Scan(&unsent); err != nil {
		t.Fatal(err)
	}
	b := kafkaBus(t, addrs)
	hook, waitRelayed := waitRelayed()
	newOutbox(t, b, p, outbox.Config{Table: obTable, InboxTable: ibTable, OnRelayed: hook})
	run(t, b)
	waitRelayed(t, unsent)

	rows, err := p.Query(ctx, `SELECT id FROM `+ledger)
	if err != nil {
		t.Fatal(err)
	}
	committed := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		committed[id] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	total := endOffsets(t, ctx, addrs, topic)
	recs := readKafka(t, ctx, addrs, topic, total)
	seen := map[string]int{}
	for _, r := range recs {
		seen[r.id]++
		if !committed[r.id] {
			t.Errorf("message %s published but its transaction did not commit", r.id)
		}
	}
	for id := range committed {
		if seen[id] == 0 {
			t.Errorf("committed row %s never published", id)
		}
	}
	t.Logf("%d kills: %d committed rows, %d unsent after the kills, %d records, %d duplicates (crash between publish and mark)",
		kills, len(committed), unsent, len(recs), len(recs)-len(seen))
}

// endOffsets returns the number of records in topic (no transactions, so
// the sum of its partitions' end offsets).
func endOffsets(t *testing.T, ctx context.Context, addrs []string, topic string) int {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	offs, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	offs.Each(func(o kadm.ListedOffset) { n += int(o.Offset) })
	return n
}

// SIGKILL at 20 random points of an inbox handler consuming from
// RabbitMQ, which redelivers what was not acked: every message has exactly
// one effect.
func TestInboxKill(t *testing.T) {
	p := pool(t)
	url := testserver.AMQPURL(t)
	obTable, ibTable := tables(t, p)
	effects := obTable + "_effects"
	ctx := bustest.Context(t, 120*time.Second)
	if _, err := p.Exec(ctx, `CREATE TABLE `+effects+` (id text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = p.Exec(context.Background(), `DROP TABLE IF EXISTS `+effects) })
	group, topic := bustest.Name("inboxkill"), bustest.Name("inboxkill")
	cfg := bus.Config{Broker: bus.BrokerAMQP, Group: group, AMQP: amqp.Config{URL: url}}

	// Declare the handler's queue, then publish the messages into it.
	const n = 300
	pub, err := bus.New(cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	newOutbox(t, pub, p, outbox.Config{Table: obTable, InboxTable: ibTable, DisableRelay: true})
	if err := pub.Handle("effects", topic, func(context.Context, *message.Message) error { return nil }); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := pub.Publish(ctx, topic, message.NewMessage(fmt.Sprintf("m%03d", i), nil)); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Close(ctx); err != nil {
		t.Fatal(err)
	}

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 71))
	env := []string{"KILL_DSN=" + testserver.PostgresDSN(t), "KILL_AMQP=" + url, "KILL_GROUP=" + group,
		"KILL_OUTBOX=" + obTable, "KILL_INBOX=" + ibTable, "KILL_TOPIC=" + topic, "KILL_EFFECTS=" + effects}
	handled, dups := 0, 0
	for k := range kills {
		// Every other child is killed right after an inbox commit, before
		// the ack; the others at a random point of their work.
		n, e := 1+rng.IntN(12), env
		if k%2 == 0 {
			e = append(e[:len(e):len(e)], "KILL_BLOCK_AT="+strconv.Itoa(n))
		}
		h, d := killChild(t, "inbox", e, n)
		handled += h
		dups += d
	}

	// This process handles the rest.
	b, err := bus.New(cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	var finalDups atomic.Int64
	o2, err := outbox.New(b, p, outbox.Config{Table: obTable, InboxTable: ibTable, DisableRelay: true,
		OnDuplicate: func(outbox.DuplicateInfo) { finalDups.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	progress := make(chan struct{}, n)
	if err := b.Handle("effects", topic, inboxHandler(o2, effects, func() { progress <- struct{}{} }),
		bus.HandlerStack(func(c *middleware.StackConfig) { c.Disable |= middleware.StepDedup })); err != nil {
		t.Fatal(err)
	}
	run(t, b)
	for {
		var distinct int
		if err := p.QueryRow(ctx, `SELECT count(DISTINCT id) FROM `+effects).Scan(&distinct); err != nil {
			t.Fatal(err)
		}
		if distinct == n {
			break
		}
		select {
		case <-progress:
		case <-ctx.Done():
			t.Fatalf("%d of %d messages had an effect", distinct, n)
		}
	}
	var doubles int
	if err := p.QueryRow(ctx, `SELECT count(*) FROM (SELECT id FROM `+effects+` GROUP BY id HAVING count(*) > 1) d`).Scan(&doubles); err != nil {
		t.Fatal(err)
	}
	if doubles != 0 {
		t.Errorf("%d messages had more than one effect", doubles)
	}
	t.Logf("%d kills after %d successful handler calls in the children (duplicates included); %d redeliveries of handled messages acked with no effect (%d in the children, %d after); %d messages, %d with a double effect",
		kills, handled, int64(dups)+finalDups.Load(), dups, finalDups.Load(), n, doubles)
	if int64(dups)+finalDups.Load() < kills/2 {
		t.Errorf("%d redeliveries of handled messages, want at least %d (one per child killed between commit and ack)",
			int64(dups)+finalDups.Load(), kills/2)
	}
}
