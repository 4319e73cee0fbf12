package crash_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/internal/testserver"
	"github.com/busline/busline/middleware"
	"github.com/busline/busline/middleware/dedupredis"
	"github.com/busline/busline/middleware/dedupsql"
	"github.com/busline/busline/schema"
)

// childEnv, when set, makes the test binary the consumer process: its value
// is the consumer's childConfig as JSON.
const childEnv = "BUSLINE_CRASH_CHILD"

func TestMain(m *testing.M) {
	if raw := os.Getenv(childEnv); raw != "" {
		os.Exit(runChild(raw))
	}
	if raw := os.Getenv(delayedChildEnv); raw != "" {
		os.Exit(runDelayedChild(raw))
	}
	if raw := os.Getenv(committerEnv); raw != "" {
		os.Exit(runCommitter(raw))
	}
	os.Exit(m.Run())
}

// The measured run: messages published while the first consumer runs, the
// kill after a third of them were handled, the dedup lease, the work each
// handling does, and the bounds the issue sets.
const (
	messages   = 2000
	lease      = 3 * time.Second
	work       = 2 * time.Millisecond
	unclaimedB = 10 * time.Second          // bound for messages not claimed at the kill
	claimedB   = lease + 10*time.Second    // bound for messages claimed at the kill
	deadline   = claimedB + 30*time.Second // how long the test waits at most for a step
	// rejoinDeadline bounds the wait for a Kafka consumer group to drop the
	// killed member: its session timeout, 10s with Sarama, 45s with
	// franz-go's and Kafka's Java client's defaults.
	rejoinDeadline = 90 * time.Second
)

func TestCrashRecoveryKafkaRedis(t *testing.T)    { crashRecovery(t, kafkaBroker(t), redisStore(t)) }
func TestCrashRecoveryKafkaPostgres(t *testing.T) { crashRecovery(t, kafkaBroker(t), postgresStore(t)) }
func TestCrashRecoveryAMQPRedis(t *testing.T)     { crashRecovery(t, amqpBroker(t), redisStore(t)) }
func TestCrashRecoveryAMQPPostgres(t *testing.T)  { crashRecovery(t, amqpBroker(t), postgresStore(t)) }

// childConfig is what the consumer process is told.
type childConfig struct {
	Broker  string        `json:"broker"`
	Kafka   []string      `json:"kafka,omitempty"`
	AMQPURL string        `json:"amqp_url,omitempty"`
	Topic   string        `json:"topic"`
	Group   string        `json:"group"`
	Store   string        `json:"store"`
	Redis   string        `json:"redis,omitempty"`
	Prefix  string        `json:"prefix,omitempty"`
	DSN     string        `json:"dsn,omitempty"`
	Table   string        `json:"table,omitempty"`
	Lease   time.Duration `json:"lease"`
	Work    time.Duration `json:"work"`
	// Name is the consumer's client name on the store's connections
	// (application_name, CLIENT SETNAME), so that the test can tell when
	// the server dropped the connections of a killed consumer.
	Name string `json:"name"`
}

// busConfig is the bus configuration of both the consumer and the test's
// publisher.
func (c childConfig) busConfig() bus.Config {
	bc := bus.Config{Broker: c.Broker, Group: c.Group, DeadLetterTopic: c.Topic + ".dlq"}
	switch c.Broker {
	case bus.BrokerKafka:
		// Static membership, as a service restarted in place should use
		// it: the restarted consumer takes its partitions back at once,
		// instead of after the session timeout.
		bc.Kafka = kafka.Config{Brokers: c.Kafka, Partitions: 4, InstanceID: "crash-consumer"}
	case bus.BrokerAMQP:
		// Four messages in flight, so that several are claimed at the kill.
		bc.AMQP = amqp.Config{URL: c.AMQPURL, Concurrency: 4}
	}
	return bc
}

// runChild is the consumer process: it handles the topic with the dedup
// store, printing "E <uuid> <unix nanos>" on stdout after each effect and
// "READY" once it runs, until it is killed.
func runChild(raw string) int {
	var cfg childConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		return 2
	}
	ctx := context.Background()
	var store middleware.DedupStore
	switch cfg.Store {
	case "redis":
		store = dedupredis.New(redis.NewClient(&redis.Options{Addr: cfg.Redis, ClientName: cfg.Name}), dedupredis.Config{Prefix: cfg.Prefix})
	case "postgres":
		pc, err := pgxpool.ParseConfig(cfg.DSN)
		if err != nil {
			fmt.Fprintln(os.Stderr, "crash child:", err)
			return 2
		}
		pc.ConnConfig.RuntimeParams["application_name"] = cfg.Name
		pool, err := pgxpool.NewWithConfig(ctx, pc)
		if err != nil {
			fmt.Fprintln(os.Stderr, "crash child:", err)
			return 2
		}
		store = dedupsql.New(pool, dedupsql.Config{Table: cfg.Table})
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	b, err := bus.New(cfg.busConfig(), bus.WithLogger(logger), bus.WithStack(func(c *middleware.StackConfig) {
		c.Dedup.Store = store
		c.Dedup.Lease = cfg.Lease
	}))
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		return 2
	}
	err = b.Handle("effects", cfg.Topic, func(_ context.Context, m *message.Message) error {
		time.Sleep(cfg.Work) // the handler's work, before its effect
		// One write(2) of a short line: atomic on the pipe, and out of the
		// process before the next instruction, so a kill loses no effect.
		_, err := fmt.Fprintf(os.Stdout, "E %s %d\n", m.UUID, time.Now().UnixNano())
		return err
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		return 2
	}
	go func() {
		<-b.Running()
		fmt.Fprintln(os.Stdout, "READY")
	}()
	if err := b.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		return 1
	}
	return 0
}

// broker is a broker for the test: its part of the consumer's config.
type broker struct {
	name string
	set  func(*childConfig)
	// members, when set, lists the members of a stable consumer group
	// (nil while it rebalances): on Kafka a restarted consumer gets its
	// partitions only once the group dropped the killed member, after its
	// session timeout, which is the consumer's and not dedup's.
	members func(ctx context.Context, group string) ([]string, error)
	// describe, when set, says what the broker holds of the consumer
	// group's messages (for a failure's report).
	describe func(ctx context.Context, cfg childConfig) string
}

func kafkaBroker(t *testing.T) broker {
	// kfake runs here, in the test process, so that it outlives the
	// consumer it serves.
	addrs := testserver.Kafka(t, 4)
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	adm := kadm.NewClient(cl)
	return broker{
		name: bus.BrokerKafka,
		set:  func(c *childConfig) { c.Broker, c.Kafka = bus.BrokerKafka, addrs },
		members: func(ctx context.Context, group string) ([]string, error) {
			gs, err := adm.DescribeGroups(ctx, group)
			if err != nil {
				return nil, err
			}
			g := gs[group]
			if g.Err != nil || g.State != "Stable" {
				return nil, g.Err
			}
			var ids []string
			for _, m := range g.Members {
				ids = append(ids, m.MemberID)
			}
			return ids, nil
		},
	}
}

func amqpBroker(t *testing.T) broker {
	u := testserver.AMQPURL(t)
	return broker{
		name: bus.BrokerAMQP,
		set:  func(c *childConfig) { c.Broker, c.AMQPURL = bus.BrokerAMQP, u },
		describe: func(_ context.Context, cfg childConfig) string {
			conn, err := amqp091.Dial(u)
			if err != nil {
				return err.Error()
			}
			defer conn.Close()
			ch, err := conn.Channel()
			if err != nil {
				return err.Error()
			}
			name := amqp.QueueName(cfg.Topic, cfg.Group+".effects")
			q, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
			if err != nil {
				return err.Error()
			}
			return fmt.Sprintf("queue %s: %d ready, %d consumers", name, q.Messages, q.Consumers)
		},
	}
}

// rejoined waits until group is stable with members none of which is in
// old, polling the broker, and returns when it saw that.
func rejoined(t *testing.T, ctx context.Context, br broker, group string, old []string) time.Time {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	timeout := time.NewTimer(rejoinDeadline)
	defer timeout.Stop()
	for {
		ids, err := br.members(ctx, group)
		if err != nil {
			t.Fatalf("describe group %s: %v", group, err)
		}
		if len(ids) > 0 && !slices.ContainsFunc(ids, func(id string) bool { return slices.Contains(old, id) }) {
			return time.Now()
		}
		select {
		case <-tick.C:
		case <-timeout.C:
			t.Fatalf("group %s did not rejoin within %v", group, rejoinDeadline)
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
}

// store is a shared dedup store for the test: its part of the consumer's
// config, and a way to list the keys claimed (not done) in it.
type store struct {
	name    string
	set     func(*childConfig)
	claimed func(ctx context.Context) (map[string]bool, error)
	// connected counts the server's connections of the client named name
	// (childConfig.Name).
	connected func(ctx context.Context, name string) (int, error)
	// record describes the store's record of the message id, for a
	// failure's report.
	record func(ctx context.Context, id string) string
}

func redisStore(t *testing.T) store {
	addr := testserver.RedisAddr(t)
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { c.Close() })
	prefix := bustest.Name("busline-crash") + ":"
	t.Cleanup(func() {
		ctx := context.Background()
		if keys, _ := c.Keys(ctx, prefix+"*").Result(); len(keys) > 0 {
			c.Del(ctx, keys...)
		}
	})
	return store{
		name: "redis",
		set:  func(cc *childConfig) { cc.Store, cc.Redis, cc.Prefix = "redis", addr, prefix },
		claimed: func(ctx context.Context) (map[string]bool, error) {
			keys, err := c.Keys(ctx, prefix+"*").Result()
			if err != nil || len(keys) == 0 {
				return map[string]bool{}, err
			}
			vals, err := c.MGet(ctx, keys...).Result()
			if err != nil {
				return nil, err
			}
			out := map[string]bool{}
			for i, v := range vals {
				if s, _ := v.(string); strings.HasPrefix(s, "c:") {
					out[uuidOfKey(keys[i])] = true
				}
			}
			return out, nil
		},
		connected: func(ctx context.Context, name string) (int, error) {
			list, err := c.ClientList(ctx).Result()
			n := 0
			for _, l := range strings.Split(list, "\n") {
				if slices.Contains(strings.Fields(l), "name="+name) {
					n++
				}
			}
			return n, err
		},
		record: func(ctx context.Context, id string) string {
			keys, err := c.Keys(ctx, prefix+"*/"+id).Result()
			if err != nil || len(keys) == 0 {
				return fmt.Sprintf("no record (%v)", err)
			}
			v, _ := c.Get(ctx, keys[0]).Result()
			ttl, _ := c.PTTL(ctx, keys[0]).Result()
			return fmt.Sprintf("%q, expires in %v", v, ttl)
		},
	}
}

func postgresStore(t *testing.T) store {
	dsn := testserver.PostgresDSN(t)
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	table := strings.ReplaceAll(bustest.Name("busline_crash"), "-", "_")
	if err := dedupsql.New(pool, dedupsql.Config{Table: table}).Migrate(context.Background()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	t.Cleanup(func() { pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+table) })
	return store{
		name: "postgres",
		set:  func(cc *childConfig) { cc.Store, cc.DSN, cc.Table = "postgres", dsn, table },
		claimed: func(ctx context.Context) (map[string]bool, error) {
			rows, err := pool.Query(ctx, "SELECT key FROM "+table+" WHERE NOT done AND expires_at > now()")
			if err != nil {
				return nil, err
			}
			defer rows.Close()
			out := map[string]bool{}
			for rows.Next() {
				var k string
				if err := rows.Scan(&k); err != nil {
					return nil, err
				}
				out[uuidOfKey(k)] = true
			}
			return out, rows.Err()
		},
		connected: func(ctx context.Context, name string) (int, error) {
			var n int
			err := pool.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name).Scan(&n)
			return n, err
		},
		record: func(ctx context.Context, id string) string {
			var owner string
			var done bool
			var left time.Duration
			err := pool.QueryRow(ctx, "SELECT owner, done, expires_at - now() FROM "+table+" WHERE key LIKE '%/' || $1", id).Scan(&owner, &done, &left)
			if err != nil {
				return fmt.Sprintf("no record (%v)", err)
			}
			return fmt.Sprintf("owner %q, done %v, expires in %v", owner, done, left.Round(time.Millisecond))
		},
	}
}

// storeDropped waits until the store server holds no connection of the
// client named name, whose process was killed: then it ran every
// statement that client sent before it died. It returns how many
// connections it found first, and how long it waited.
func storeDropped(t *testing.T, ctx context.Context, st store, name string) (first int, waited time.Duration) {
	t.Helper()
	start := time.Now()
	first = -1
	for {
		n, err := st.connected(ctx, name)
		if err != nil {
			t.Fatalf("%s: connections of %s: %v", st.name, name, err)
		}
		if first < 0 {
			first = n
		}
		if n == 0 {
			return first, time.Since(start)
		}
		if time.Since(start) > deadline {
			t.Fatalf("%s still holds %d connections of the killed consumer %s after %v", st.name, n, name, deadline)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// childName is the store client name of consumer n of cfg.
func childName(cfg childConfig, n int) string { return fmt.Sprintf("%s-%d", cfg.Topic, n) }

// since returns the times ts relative to base.
func since(ts []time.Time, base time.Time) []time.Duration {
	out := make([]time.Duration, len(ts))
	for i, t := range ts {
		out[i] = t.Sub(base).Round(time.Microsecond)
	}
	return out
}

// uuidOfKey returns the message UUID of a store key "<prefix><handler>/<uuid>".
func uuidOfKey(k string) string { return k[strings.LastIndexByte(k, '/')+1:] }

// crashRecovery runs the consumer, publishes, kills the consumer with
// SIGKILL once a third of the messages were handled, reads which keys the
// store still holds claimed once it dropped the killed consumer's
// connections, starts the consumer again at once, and waits until every
// message was handled; when it gives up, it says which messages it waited
// for, what the store and the broker hold of them, and what the consumers
// logged about them.
func crashRecovery(t *testing.T, br broker, st store) {
	if testing.Short() {
		t.Skip("crash recovery runs two consumer processes for about 20s")
	}
	cfg := childConfig{
		Topic: bustest.Name("crash"), Group: bustest.Name("crash"),
		Lease: lease, Work: work,
	}
	br.set(&cfg)
	st.set(&cfg)
	ctx := bustest.Context(t, rejoinDeadline+2*deadline)

	rec := &recorder{watched: newWatched()}
	first := startChild(t, cfg, rec, 0)
	rec.waitFor(t, ctx, "the first consumer to start", func() bool { return rec.ready[0] })

	// Publish from this process while the consumer runs.
	pub, err := bus.New(cfg.busConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(context.Background())
	ids := make([]string, messages)
	msgs := make([]*message.Message, messages)
	for i := range msgs {
		ids[i] = fmt.Sprintf("m-%05d-%s", i, cfg.Topic)
		msgs[i] = message.NewMessage(ids[i], []byte("x"))
		msgs[i].Metadata.Set(schema.KeyPartitionKey, strconv.Itoa(i%64))
	}
	published := make(chan error, 1)
	go func() {
		var err error
		for chunk := range slices.Chunk(msgs, 100) {
			if err = pub.Publish(ctx, cfg.Topic, chunk...); err != nil {
				break
			}
		}
		published <- err
	}()

	// Kill with a backlog, so that every partition or slot has a message
	// in flight: all published, a third handled.
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, ctx, "a third of the messages to be handled", func() bool { return rec.handled[0] >= messages/3 })
	group := cfg.Group + ".effects"
	var oldMembers []string
	if br.members != nil {
		if oldMembers, err = br.members(ctx, group); err != nil {
			t.Fatal(err)
		}
	}
	// The store knows the consumer's connections by its name, or the wait
	// for them to drop, below, would wait for nothing.
	if n, err := st.connected(ctx, childName(cfg, 0)); n == 0 || err != nil {
		t.Fatalf("%s: %d connections of the running consumer %s (%v); want some", st.name, n, childName(cfg, 0), err)
	}
	if err := first.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	_ = first.Wait() // and its output read to the end
	kill := time.Now()
	// The store may still run what the killed consumer sent it: a commit
	// sent just before the kill lands after it (the server notices the
	// dead client only when it reads from or writes to its connection
	// again). The claims at the kill are what the store holds once it
	// dropped the killed consumer's connections: read earlier, a claim
	// whose commit was in flight counts as claimed, and its message, done
	// and acked as a duplicate after the restart, is waited for in vain.
	early, err := st.claimed(ctx)
	if err != nil {
		t.Fatal(err)
	}
	conns, dropped := storeDropped(t, ctx, st, childName(cfg, 0))
	claimed, err := st.claimed(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var settledLate []string
	for id := range early {
		if !claimed[id] {
			settledLate = append(settledLate, id)
		}
	}
	slices.Sort(settledLate)

	restart := time.Now()
	second := startChild(t, cfg, rec, 1)
	defer func() {
		_ = second.Process.Kill()
		_ = second.Wait()
	}()
	// The bounds count from the restart. On Kafka, when the group gave
	// the restarted consumer the partitions is logged (static membership
	// makes it at once).
	resume := restart
	rejoin := time.Duration(0)
	if br.members != nil {
		rejoin = rejoined(t, ctx, br, group, oldMembers).Sub(restart)
	}
	// Every message handled, and every message claimed at the kill handled
	// after it: its claim was not committed, so it runs again even when
	// its effect happened before the kill (a double effect).
	unhandled := func() []string {
		var out []string
		for _, id := range ids {
			if len(rec.effects[1][id]) == 0 && (claimed[id] || len(rec.effects[0][id]) == 0) {
				out = append(out, id)
			}
		}
		return out
	}
	rec.waitForOr(t, ctx, "every message to be handled", func() bool { return len(unhandled()) == 0 }, func() string {
		// Which messages, what the store and the broker hold of them, and
		// what the consumers logged about them.
		missing := unhandled()
		var b strings.Builder
		fmt.Fprintf(&b, "%d of %d messages not handled %v after the restart", len(missing), messages, time.Since(restart).Round(time.Millisecond))
		if br.describe != nil {
			fmt.Fprintf(&b, "; %s", br.describe(ctx, cfg))
		}
		for i, id := range missing {
			if i == 20 {
				fmt.Fprintf(&b, "\n  ... and %d more", len(missing)-i)
				break
			}
			fmt.Fprintf(&b, "\n  %s: claimed at the kill %v, effects before the kill %v (relative to it), store: %s", id, claimed[id], since(rec.effects[0][id], kill), st.record(ctx, id))
			for n := range rec.logs {
				for _, l := range rec.logs[n] {
					if strings.Contains(l, id) {
						fmt.Fprintf(&b, "\n    consumer %d: %s", n, l)
					}
				}
			}
		}
		for n := range rec.odd {
			if len(rec.odd[n]) > 0 {
				fmt.Fprintf(&b, "\nconsumer %d: %d stdout lines not understood, the first: %q", n, len(rec.odd[n]), rec.odd[n][:min(len(rec.odd[n]), 5)])
			}
		}
		fmt.Fprintf(&b, "\nrestarted consumer: %d effects, %d stderr lines; the last ones:", rec.handled[1], len(rec.logs[1]))
		for _, l := range rec.logs[1][max(0, len(rec.logs[1])-10):] {
			fmt.Fprintf(&b, "\n    %s", l)
		}
		return b.String()
	})
	_ = second.Process.Kill()
	_ = second.Wait()

	// Every message handled; when, and how often.
	var lost, doubles []string
	var worstUnclaimed, worstClaimed time.Duration
	nUnclaimed, doubleClaimed := 0, 0
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, id := range ids {
		before, after := rec.effects[0][id], rec.effects[1][id]
		if len(before)+len(after) == 0 {
			lost = append(lost, id)
			continue
		}
		if len(before)+len(after) > 1 {
			doubles = append(doubles, fmt.Sprintf("%s (%d before the kill, %d after; claimed at the kill: %v)", id, len(before), len(after), claimed[id]))
			if claimed[id] {
				doubleClaimed++
			}
		}
		if len(after) == 0 {
			continue
		}
		took := after[0].Sub(resume)
		switch {
		case claimed[id]:
			worstClaimed = max(worstClaimed, took)
			if took > claimedB {
				t.Errorf("%s, claimed at the kill, handled %v after the restart; want within the lease + 10s (%v)", id, took, claimedB)
			}
		case len(before) == 0:
			nUnclaimed++
			worstUnclaimed = max(worstUnclaimed, took)
			if took > unclaimedB {
				t.Errorf("%s, not claimed at the kill, handled %v after the restart; want within %v", id, took, unclaimedB)
			}
		}
	}
	if len(lost) > 0 {
		t.Errorf("%d messages lost: %v", len(lost), lost[:min(len(lost), 10)])
	}
	t.Logf("%s + %s: %d messages, %d handled before the kill, %d claimed at the kill; on Kafka the group held the restarted consumer (static member) %v after the restart; after the restart: %d unclaimed ones handled within %v, claimed ones within %v (lease %v)",
		br.name, st.name, messages, rec.handled[0], len(claimed), rejoin.Round(time.Millisecond),
		nUnclaimed, worstUnclaimed.Round(time.Millisecond), worstClaimed.Round(time.Millisecond), lease)
	late := make([]string, len(settledLate))
	for i, id := range settledLate {
		late[i] = fmt.Sprintf("%s (%d effects before the kill, %d after)", id, len(rec.effects[0][id]), len(rec.effects[1][id]))
	}
	t.Logf("the store held %d connections of the killed consumer, dropped within %v; claims it still held then, ended by its own statements after it died (committed or released): %d %v",
		conns, dropped.Round(time.Microsecond), len(late), late)
	t.Logf("double effects: %d (%d of them claimed at the kill): %v", len(doubles), doubleClaimed, doubles)
	t.Logf("restarted consumer's log: %d ERROR lines, %d lines of messages waiting for a claim (%d distinct messages)",
		rec.errorLines[1], rec.waitLines[1], len(rec.waitKeys))
	if rec.waitLines[1] != len(rec.waitKeys) {
		t.Errorf("%d wait log lines for %d waiting messages; want one line per message", rec.waitLines[1], len(rec.waitKeys))
	}
}

// recorder collects what the consumer processes print.
type recorder struct {
	watched
	ready      [2]bool
	handled    [2]int
	effects    [2]map[string][]time.Time
	errorLines [2]int
	waitLines  [2]int
	waitKeys   map[string]bool // keys of the restarted consumer's wait lines
	logs       [2][]string     // the consumers' stderr lines
	odd        [2][]string     // stdout lines that are neither an effect nor READY
}

// watched is what the children's output lines change, under mu; a change
// wakes the waiters.
type watched struct {
	mu      sync.Mutex
	changed chan struct{}
}

func newWatched() watched { return watched{changed: make(chan struct{}, 1)} }

// waitFor waits until cond, checked under w.mu, holds.
func (w *watched) waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	w.waitForOr(t, ctx, what, cond, nil)
}

// waitForOr is waitFor that, when it gives up, adds what explain, called
// under w.mu, says about it.
func (w *watched) waitForOr(t *testing.T, ctx context.Context, what string, cond func() bool, explain func() string) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...)
		if explain != nil {
			w.mu.Lock()
			msg += ": " + explain()
			w.mu.Unlock()
		}
		t.Fatal(msg)
	}
	timer := time.NewTimer(deadline)
	defer timer.Stop()
	for {
		w.mu.Lock()
		ok := cond()
		w.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-w.changed:
		case <-timer.C:
			fail("gave up waiting %v for %s", deadline, what)
		case <-ctx.Done():
			fail("gave up waiting for %s: %v", what, ctx.Err())
		}
	}
}

// notify wakes the waiters; w.mu is held or not.
func (w *watched) notify() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// lineWriter calls line for each complete line written to it.
type lineWriter struct {
	buf  []byte
	line func(string)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.line(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
}

// startChild starts consumer number n (0 or 1) of cfg.
func startChild(t *testing.T, cfg childConfig, rec *recorder, n int) *exec.Cmd {
	t.Helper()
	cfg.Name = childName(cfg, n)
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	rec.effects[n] = map[string][]time.Time{}
	if rec.waitKeys == nil {
		rec.waitKeys = map[string]bool{}
	}
	rec.mu.Unlock()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(raw))
	cmd.Stdout = &lineWriter{line: func(l string) {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		defer rec.notify()
		if l == "READY" {
			rec.ready[n] = true
			return
		}
		f := strings.Fields(l)
		if len(f) != 3 || f[0] != "E" {
			rec.odd[n] = append(rec.odd[n], l)
			return
		}
		ns, _ := strconv.ParseInt(f[2], 10, 64)
		rec.effects[n][f[1]] = append(rec.effects[n][f[1]], time.Unix(0, ns))
		rec.handled[n]++
	}}
	var errTail []string
	cmd.Stderr = &lineWriter{line: func(l string) {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		rec.logs[n] = append(rec.logs[n], l)
		if strings.Contains(l, "level=ERROR") {
			rec.errorLines[n]++
			if len(errTail) < 5 {
				errTail = append(errTail, l)
			}
		}
		if strings.Contains(l, "waiting for its dedup claim") {
			rec.waitLines[n]++
			if n == 1 {
				if i := strings.Index(l, "dedup_key="); i >= 0 {
					rec.waitKeys[strings.Fields(l[i:])[0]] = true
				}
			}
		}
		if strings.HasPrefix(l, "crash child:") {
			t.Log(l)
		}
	}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if len(errTail) > 0 {
			t.Logf("consumer %d: first ERROR lines: %s", n, strings.Join(errTail, "\n"))
		}
	})
	return cmd
}

// committerEnv, when set, makes the test binary a process that commits
// one dedup key in PostgreSQL, for [TestStoreRunsWhatAKilledClientSent]:
// its value is the childConfig as JSON, the key in Topic.
const committerEnv = "BUSLINE_CRASH_COMMITTER"

func runCommitter(raw string) int {
	var cfg childConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "crash committer:", err)
		return 2
	}
	ctx := context.Background()
	pc, err := pgx.ParseConfig(cfg.DSN)
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash committer:", err)
		return 2
	}
	pc.RuntimeParams["application_name"] = cfg.Name
	conn, err := pgx.ConnectConfig(ctx, pc)
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash committer:", err)
		return 2
	}
	if err := dedupsql.New(conn, dedupsql.Config{Table: cfg.Table}).Commit(ctx, cfg.Topic, time.Hour); err != nil {
		fmt.Fprintln(os.Stderr, "crash committer:", err)
		return 1
	}
	return 0
}

// TestStoreRunsWhatAKilledClientSent pins what the claims at the kill must
// wait for: a commit that a consumer sent the store just before it was
// killed lands after its death, so a snapshot of the claims read as soon as
// the process is gone still holds that claim (and its message, done, is
// only a duplicate after the restart). Here the commit waits on a row lock
// that the test holds, so that it is in flight when its process is killed.
func TestStoreRunsWhatAKilledClientSent(t *testing.T) {
	st := postgresStore(t)
	var cc childConfig
	st.set(&cc)
	cc.Name = bustest.Name("crash-committer")
	const id = "m-1"
	cc.Topic = "effects/" + id // the key
	ctx := bustest.Context(t, deadline)

	db, err := pgxpool.New(ctx, cc.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if state, err := dedupsql.New(db, dedupsql.Config{Table: cc.Table}).Claim(ctx, cc.Topic, "owner", time.Minute); err != nil || state != middleware.Claimed {
		t.Fatalf("claim: %v, %v", state, err)
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "SELECT 1 FROM "+cc.Table+" WHERE key = $1 FOR UPDATE", cc.Topic); err != nil {
		t.Fatal(err)
	}

	raw, err := json.Marshal(cc)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), committerEnv+"="+string(raw))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	// The commit reached the server and waits for the lock.
	for {
		var n int
		if err := db.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'", cc.Name).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			break
		}
		if cmd.ProcessState != nil || ctx.Err() != nil {
			t.Fatalf("the committer did not wait on the lock: %s", out.Bytes())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n, err := st.connected(ctx, cc.Name); n != 1 || err != nil {
		t.Fatalf("connections of the committer: %d, %v; want 1", n, err)
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	_ = cmd.Wait()

	early, err := st.claimed(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !early[id] {
		t.Fatalf("claims read at once after the kill: %v; want %s still claimed, its commit in flight", early, id)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	storeDropped(t, ctx, st, cc.Name)
	claimed, err := st.claimed(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if claimed[id] {
		t.Fatalf("%s still claimed once the server dropped the killed client; want its commit landed", id)
	}
	if rec := st.record(ctx, id); !strings.Contains(rec, "done true") {
		t.Fatalf("record of %s: %s; want done", id, rec)
	}
}
