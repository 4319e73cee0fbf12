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
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/bus/kafka"
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
		store = dedupredis.New(redis.NewClient(&redis.Options{Addr: cfg.Redis}), dedupredis.Config{Prefix: cfg.Prefix})
	case "postgres":
		pool, err := pgxpool.New(ctx, cfg.DSN)
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
}

func kafkaBroker(t *testing.T) broker {
	// kfake runs here, in the test process, so that it outlives the
	// consumer it serves.
	addrs := bustest.Kafka(t, 4)
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
	u := bustest.AMQPURL(t)
	return broker{name: bus.BrokerAMQP, set: func(c *childConfig) { c.Broker, c.AMQPURL = bus.BrokerAMQP, u }}
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
}

func redisStore(t *testing.T) store {
	addr := bustest.RedisAddr(t)
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
	}
}

func postgresStore(t *testing.T) store {
	dsn := bustest.PostgresDSN(t)
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
	}
}

// uuidOfKey returns the message UUID of a store key "<prefix><handler>/<uuid>".
func uuidOfKey(k string) string { return k[strings.LastIndexByte(k, '/')+1:] }

// crashRecovery runs the consumer, publishes, kills the consumer with
// SIGKILL once a third of the messages were handled, reads which keys the
// store still holds claimed, starts the consumer again at once, and waits
// until every message was handled.
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

	rec := &recorder{changed: make(chan struct{}, 1)}
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
	if err := first.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	_ = first.Wait() // and its output read to the end
	claimed, err := st.claimed(ctx)
	if err != nil {
		t.Fatal(err)
	}

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
	rec.waitFor(t, ctx, "every message to be handled", func() bool {
		for _, id := range ids {
			if len(rec.effects[1][id]) == 0 && (claimed[id] || len(rec.effects[0][id]) == 0) {
				return false
			}
		}
		return true
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
	t.Logf("double effects: %d (%d of them claimed at the kill): %v", len(doubles), doubleClaimed, doubles)
	t.Logf("restarted consumer's log: %d ERROR lines, %d lines of messages waiting for a claim (%d distinct messages)",
		rec.errorLines[1], rec.waitLines[1], len(rec.waitKeys))
	if rec.waitLines[1] != len(rec.waitKeys) {
		t.Errorf("%d wait log lines for %d waiting messages; want one line per message", rec.waitLines[1], len(rec.waitKeys))
	}
}

// recorder collects what the consumer processes print.
type recorder struct {
	mu         sync.Mutex
	ready      [2]bool
	handled    [2]int
	effects    [2]map[string][]time.Time
	errorLines [2]int
	waitLines  [2]int
	waitKeys   map[string]bool // keys of the restarted consumer's wait lines
	changed    chan struct{}
}

// waitFor waits until cond, checked under rec.mu, holds.
func (rec *recorder) waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	timer := time.NewTimer(deadline)
	defer timer.Stop()
	for {
		rec.mu.Lock()
		ok := cond()
		rec.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-rec.changed:
		case <-timer.C:
			t.Fatalf("gave up waiting %v for %s", deadline, what)
		case <-ctx.Done():
			t.Fatalf("gave up waiting for %s: %v", what, ctx.Err())
		}
	}
}

func (rec *recorder) notify() {
	select {
	case rec.changed <- struct{}{}:
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
