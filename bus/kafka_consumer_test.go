package bus_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/broker"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/bus/telemetry"
	"github.com/busline/busline/handlers"
	"github.com/busline/busline/middleware"
	"github.com/busline/busline/schema"
)

// The tests of the Kafka consumer (franz-go group consumer, lanes per
// ordering mode, commits of the finished prefix), through the bus's public
// API on a kfake cluster. Run them alone with -run TestKafkaConsumer.

// kafkaCluster starts a kfake cluster of parts partitions per topic that
// accepts short session timeouts, closed when the test ends.
func kafkaCluster(t *testing.T, parts int) []string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(parts), kfake.GroupMinSessionTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

// publishSeq publishes n messages with ids prefix-00000.., payload "<seq>",
// keyed by key(i) when key is not nil, through a short-lived bus.
func publishSeq(t *testing.T, addrs []string, parts int32, topic, prefix string, n int, key func(int) string) {
	t.Helper()
	b, err := bus.New(bus.Config{Broker: bus.BrokerKafka, Kafka: kafka.Config{Brokers: addrs, Partitions: parts}},
		bus.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	var msgs []*message.Message
	for i := range n {
		m := message.NewMessage(fmt.Sprintf("%s-%05d", prefix, i), []byte(strconv.Itoa(i)))
		if key != nil {
			m.Metadata.Set(schema.KeyPartitionKey, key(i))
		}
		msgs = append(msgs, m)
		if len(msgs) == 500 || i == n-1 {
			if err := b.Publish(context.Background(), topic, msgs...); err != nil {
				t.Fatal(err)
			}
			msgs = msgs[:0]
		}
	}
}

// consumerBus is a bus on addrs whose handlers consume as group prefix g.
func consumerBus(t *testing.T, addrs []string, group string, kc kafka.Config) *bus.Bus {
	t.Helper()
	kc.Brokers = addrs
	b, err := bus.New(bus.Config{Broker: bus.BrokerKafka, Group: group, Kafka: kc, ShutdownTimeout: 10 * time.Second},
		bus.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// runConsumerBus runs b until the test ends or stop is called; stop closes it
// gracefully and waits for Run.
func runConsumerBus(t *testing.T, b *bus.Bus) (stop func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- b.Run(context.Background()) }()
	select {
	case <-b.Running():
	case <-time.After(30 * time.Second):
		t.Fatal("bus not running within 30s")
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := b.Close(ctx); err != nil {
				t.Errorf("Close: %v", err)
			}
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// waitFor waits until cond holds, checking every 10ms, or fails after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		<-tick.C
	}
}

// counts counts handlings per message id.
type counts struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counts) add(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[id]++
	return len(c.n)
}

func (c *counts) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.n)
}

func (c *counts) twice() (ids []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, k := range c.n {
		if k > 1 {
			ids = append(ids, id)
		}
	}
	return ids
}

// Two buses in one group on a four-partition topic: a second member joins
// and later the first leaves while 10,000 records flow through 1ms
// handlers. Revoked partitions are committed exactly up to what finished, so
// no record is lost and none is handled twice.
func TestKafkaConsumerRebalance(t *testing.T) {
	const n = 10000
	addrs := kafkaCluster(t, 4)
	topic := bustest.Name("rebalance")
	publishSeq(t, addrs, 4, topic, "r", n, func(i int) string { return "k" + strconv.Itoa(i%64) })

	group := bustest.Name("g")
	var seen counts
	var handledBy [2]atomic.Int64
	handler := func(member int) bus.HandlerFunc {
		return func(ctx context.Context, m *message.Message) error {
			t := time.NewTimer(time.Millisecond)
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done():
				return ctx.Err()
			}
			seen.add(m.UUID)
			handledBy[member].Add(1)
			return nil
		}
	}
	// Every member handles in key order so that 1ms handlers get through
	// 10,000 records in seconds. The session timeout is long enough that a
	// member loaded by -race and the rest of CI does not lose its session
	// (a lost partition's results are dropped and handled again by design,
	// which this test would count as twice; TestKafkaConsumerLostPartitions
	// tests that case); members leave by Close, which does not wait for it.
	kc := kafka.Config{Partitions: 4, Ordering: broker.OrderKey, SessionTimeout: 3 * time.Second, RebalanceTimeout: 10 * time.Second}
	b1 := consumerBus(t, addrs, group, kc)
	if err := b1.Handle("h", topic, handler(0)); err != nil {
		t.Fatal(err)
	}
	stop1 := runConsumerBus(t, b1)
	waitFor(t, 60*time.Second, "2,000 handled by the first member", func() bool { return seen.distinct() >= 2000 })

	b2 := consumerBus(t, addrs, group, kc)
	if err := b2.Handle("h", topic, handler(1)); err != nil {
		t.Fatal(err)
	}
	stop2 := runConsumerBus(t, b2)
	waitFor(t, 60*time.Second, "the second member handling", func() bool { return handledBy[1].Load() > 0 })
	waitFor(t, 60*time.Second, "6,000 handled", func() bool { return seen.distinct() >= 6000 })
	stop1() // the first member leaves
	waitFor(t, 60*time.Second, "all handled", func() bool { return seen.distinct() == n })
	stop2()

	if d := seen.twice(); len(d) > 0 {
		slices.Sort(d)
		t.Errorf("%d records handled twice, e.g. %v", len(d), d[:min(5, len(d))])
	}
	t.Logf("first member %d, second member %d", handledBy[0].Load(), handledBy[1].Load())
}

// A consumer killed with SIGKILL at random points of a 10,000-record stream
// and restarted until done: no record is lost (each is handled or
// dead-lettered), and the records handled twice are counted; they never
// exceed what was in flight plus one commit interval per kill.
func TestKafkaConsumerCrash(t *testing.T) {
	const (
		n           = 10000
		poisonEvery = 500
		kills       = 5
		maxInFlight = 200
		interval    = 200 * time.Millisecond
		// A commit is a round trip after the interval's tick: allow it
		// 100ms.
		window = interval + 100*time.Millisecond
	)
	addrs := kafkaCluster(t, 4)
	topic := bustest.Name("crash")
	publishSeq(t, addrs, 4, topic, "c", n, func(i int) string { return "k" + strconv.Itoa(i%64) })
	effects := filepath.Join(t.TempDir(), "effects")
	group := bustest.Name("g")

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 13))
	handled := map[string]int{}
	poisoned := map[string]bool{}
	var times []int64 // when each handling happened, in order
	read := func() {
		handled = map[string]int{}
		poisoned = map[string]bool{}
		times = times[:0]
		f, err := os.Open(effects)
		if errors.Is(err, os.ErrNotExist) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 3 {
				continue // a line cut by the kill
			}
			kind, id := f[0], f[1]
			switch kind {
			case "h":
				handled[id]++
				at, _ := strconv.ParseInt(f[2], 10, 64)
				times = append(times, at)
			case "p":
				poisoned[id] = true
			}
		}
	}
	done := func() bool {
		read()
		for i := range n {
			id := fmt.Sprintf("c-%05d", i)
			if i%poisonEvery == 0 {
				if !poisoned[id] {
					return false
				}
			} else if handled[id] == 0 {
				return false
			}
		}
		return true
	}
	lines := func() int {
		read()
		k := len(poisoned)
		for _, c := range handled {
			k += c
		}
		return k
	}
	start := func() *exec.Cmd {
		return startChild(t, "TestKafkaConsumerCrashChild",
			"BUSLINE_CRASH_CHILD=1",
			"BUSLINE_CRASH_BROKERS="+strings.Join(addrs, ","),
			"BUSLINE_CRASH_TOPIC="+topic,
			"BUSLINE_CRASH_GROUP="+group,
			"BUSLINE_CRASH_EFFECTS="+effects,
			"BUSLINE_CRASH_POISON="+strconv.Itoa(poisonEvery),
			"BUSLINE_CRASH_MAX_IN_FLIGHT="+strconv.Itoa(maxInFlight),
			"BUSLINE_CRASH_COMMIT_INTERVAL="+interval.String(),
		)
	}
	// bound is what the kills may redeliver: per kill, the records in
	// flight plus those handled within one commit interval before it.
	bound := 0
	for k := range kills {
		before := lines()
		cmd := start()
		target := before + 300 + rng.IntN(1500)
		waitFor(t, 60*time.Second, fmt.Sprintf("run %d reaching %d effects", k, target), func() bool {
			return lines() >= target || done()
		})
		killed := time.Now()
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		recent := 0
		read()
		for _, at := range times {
			if at >= killed.Add(-window).UnixNano() {
				recent++
			}
		}
		bound += maxInFlight + recent
		t.Logf("kill %d after %d effects, %d of them within %v before it", k+1, lines(), recent, window)
	}
	cmd := start()
	waitFor(t, 120*time.Second, "every record handled or poisoned", done)
	// A graceful stop, so that the last dead letters are published.
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("last run: %v", err)
	}

	dups := 0
	for _, c := range handled {
		dups += c - 1
	}
	// Every poison record is in the dead-letter topic. A read ends at a
	// poll that stays empty for 2s, which a loaded machine can reach early:
	// read again while one is missing, for a minute at most.
	var dl map[string]bool
	notDL := func() (ids []string) {
		for i := 0; i < n; i += poisonEvery {
			if id := fmt.Sprintf("c-%05d", i); !dl[id] {
				ids = append(ids, id)
			}
		}
		return ids
	}
	for end := time.Now().Add(time.Minute); ; {
		dl = readTopic(t, addrs, bus.DefaultDeadLetterTopic)
		if len(notDL()) == 0 || time.Now().After(end) {
			break
		}
	}
	for _, id := range notDL() {
		t.Errorf("poison record %s is not in the dead-letter topic", id)
	}
	t.Logf("%d kills: %d records handled twice (bound %d), %d dead-lettered", kills, dups, bound, len(dl))
	if dups > bound {
		t.Errorf("%d records handled twice, more than in flight plus one commit interval per kill (%d)", dups, bound)
	}
}

// readTopic returns the ids of every message in topic, read without a
// group from its start to its end.
func readTopic(t *testing.T, addrs []string, topic string) map[string]bool {
	t.Helper()
	ids := map[string]bool{}
	for id := range readTopicCounts(t, addrs, topic, false) {
		ids[id] = true
	}
	return ids
}

// TestKafkaConsumerCrashChild is the consumer process of
// TestKafkaConsumerCrash; it runs only when that test starts it.
func TestKafkaConsumerCrashChild(t *testing.T) {
	if os.Getenv("BUSLINE_CRASH_CHILD") == "" {
		t.Skip("the child process of TestKafkaConsumerCrash")
	}
	poison, _ := strconv.Atoi(os.Getenv("BUSLINE_CRASH_POISON"))
	maxInFlight, _ := strconv.Atoi(os.Getenv("BUSLINE_CRASH_MAX_IN_FLIGHT"))
	interval, _ := time.ParseDuration(os.Getenv("BUSLINE_CRASH_COMMIT_INTERVAL"))
	f, err := os.OpenFile(os.Getenv("BUSLINE_CRASH_EFFECTS"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var mu sync.Mutex
	effect := func(kind, id string) {
		mu.Lock()
		defer mu.Unlock()
		// One write per line: what the kernel took survives SIGKILL.
		if _, err := f.WriteString(kind + " " + id + " " + strconv.FormatInt(time.Now().UnixNano(), 10) + "\n"); err != nil {
			panic(err)
		}
	}
	b := consumerBus(t, strings.Split(os.Getenv("BUSLINE_CRASH_BROKERS"), ","), os.Getenv("BUSLINE_CRASH_GROUP"), kafka.Config{
		Partitions: 4, SessionTimeout: time.Second, RebalanceTimeout: 5 * time.Second,
		MaxInFlight: maxInFlight, CommitInterval: interval,
	})
	err = b.Handle("crash", os.Getenv("BUSLINE_CRASH_TOPIC"), func(ctx context.Context, m *message.Message) error {
		i, _ := strconv.Atoi(strings.TrimPrefix(m.UUID, "c-"))
		if i%poison == 0 {
			effect("p", m.UUID)
			return bus.Permanent(errors.New("poison"))
		}
		t0 := time.Now()
		for time.Since(t0) < 100*time.Microsecond { // the work
		}
		effect("h", m.UUID)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	runUntilSIGTERM(t, b)
}

// startChild starts this test binary again, running only the test named
// run, with env added to the environment: the process the crash tests kill.
func startChild(t *testing.T, run string, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+run+"$", "-test.v")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// runUntilSIGTERM runs b until the process gets SIGTERM (a child's graceful
// stop) and fails t when Run fails.
func runUntilSIGTERM(t *testing.T, b *bus.Bus) {
	t.Helper()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := b.Run(ctx); err != nil {
		t.Fatal(err)
	}
}

// In key ordering, records of one key are handled one at a time in order,
// with random handler latencies and random failures (retried by the stack,
// or nacked for redelivery); in partition ordering, the records of a
// partition are. Every record is handled.
func TestKafkaConsumerOrder(t *testing.T) {
	for _, mode := range []string{bus.OrderKey, bus.OrderPartition} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			const n, keys = 2000, 40
			addrs := kafkaCluster(t, 2)
			topic := bustest.Name("order")
			publishSeq(t, addrs, 2, topic, "o", n, func(i int) string { return "k" + strconv.Itoa(i%keys) })

			var (
				mu       sync.Mutex
				last     = map[string]int{} // lane -> last seq handled successfully
				inFlight = map[string]int{} // lane -> handlers running
				maxLanes int
				problems []string
				seen     counts
			)
			rng := rand.New(rand.NewPCG(1, 2))
			var rngMu sync.Mutex
			roll := func() (time.Duration, int) {
				rngMu.Lock()
				defer rngMu.Unlock()
				return time.Duration(rng.IntN(300)) * time.Microsecond, rng.IntN(20)
			}
			b := consumerBus(t, addrs, bustest.Name("g"), kafka.Config{Partitions: 2})
			err := b.Handle("h", topic, func(ctx context.Context, m *message.Message) error {
				ri, ok := kafka.RecordFromContext(ctx)
				if !ok {
					return bus.Permanent(errors.New("no record info"))
				}
				lane := m.Metadata.Get(schema.KeyPartitionKey)
				if mode == bus.OrderPartition {
					lane = "p" + strconv.Itoa(int(ri.Partition))
				}
				seq, _ := strconv.Atoi(string(m.Payload))
				mu.Lock()
				inFlight[lane]++
				if inFlight[lane] > 1 {
					problems = append(problems, fmt.Sprintf("%s: %d in flight at once", lane, inFlight[lane]))
				}
				maxLanes = max(maxLanes, len(inFlight))
				mu.Unlock()
				defer func() {
					mu.Lock()
					if inFlight[lane]--; inFlight[lane] == 0 {
						delete(inFlight, lane)
					}
					mu.Unlock()
				}()
				d, fate := roll()
				tm := time.NewTimer(d)
				<-tm.C
				switch fate {
				case 0:
					return errors.New("transient") // retried by the stack
				case 1:
					return errRedeliver // nacked, delivered again
				}
				mu.Lock()
				if prev, ok := last[lane]; ok && seq <= prev {
					problems = append(problems, fmt.Sprintf("%s: %d after %d", lane, seq, prev))
				}
				last[lane] = seq
				mu.Unlock()
				seen.add(m.UUID)
				return nil
			}, bus.WithOrdering(mode), bus.HandlerStack(func(c *middleware.StackConfig) {
				c.Retry.InitialInterval = time.Millisecond
				c.Retry.MaxAttempts = 100
			}))
			if err != nil {
				t.Fatal(err)
			}
			runConsumerBus(t, b)
			waitFor(t, 90*time.Second, "all handled", func() bool { return seen.distinct() == n })
			mu.Lock()
			defer mu.Unlock()
			for _, p := range problems[:min(10, len(problems))] {
				t.Error(p)
			}
			if mode == bus.OrderKey && maxLanes < 2 {
				t.Errorf("at most %d keys in flight at once: no concurrency", maxLanes)
			}
			t.Logf("up to %d lanes in flight at once", maxLanes)
		})
	}
}

// errRedeliver asks the stack to nack the message for redelivery.
var errRedeliver = middleware.Redeliver(errors.New("redeliver"))

// In key ordering, one key failing for 5s (retried, dead-lettered, the next
// record of the key failing again) holds back only that key: the other
// keys' p99 latency stays within 2x of a run without the failure.
func TestKafkaConsumerBlocking(t *testing.T) {
	addrs := kafkaCluster(t, 1)
	run := func(fail time.Duration) time.Duration {
		topic := bustest.Name("blocking")
		b := consumerBus(t, addrs, bustest.Name("g"), kafka.Config{})
		var (
			mu        sync.Mutex
			lat       []time.Duration
			failUntil time.Time
			handled   atomic.Int64
			warm      = make(chan struct{})
			warmOnce  sync.Once
		)
		err := b.Handle("h", topic, func(ctx context.Context, m *message.Message) error {
			key := m.Metadata.Get(schema.KeyPartitionKey)
			if key == "k0" && fail > 0 {
				mu.Lock()
				if failUntil.IsZero() {
					failUntil = time.Now().Add(fail)
				}
				failing := time.Now().Before(failUntil)
				mu.Unlock()
				if failing {
					return errors.New("downstream of k0 is down")
				}
			}
			if key == "warm-up" {
				warmOnce.Do(func() { close(warm) })
				return nil
			}
			sent, _ := strconv.ParseInt(string(m.Payload), 10, 64)
			if key != "k0" {
				mu.Lock()
				lat = append(lat, time.Since(time.Unix(0, sent)))
				mu.Unlock()
			}
			handled.Add(1)
			return nil
		}, bus.WithOrdering(bus.OrderKey), bus.HandlerStack(func(c *middleware.StackConfig) {
			c.Retry.InitialInterval = 50 * time.Millisecond
		}))
		if err != nil {
			t.Fatal(err)
		}
		stop := runConsumerBus(t, b)
		pub := consumerBus(t, addrs, bustest.Name("pub"), kafka.Config{})
		defer pub.Close(context.Background())
		// The group's join is not part of the latency: one message first.
		wm := message.NewMessage(watermillUUID(), nil)
		wm.Metadata.Set(schema.KeyPartitionKey, "warm-up")
		if err := pub.Publish(context.Background(), topic, wm); err != nil {
			t.Fatal(err)
		}
		select {
		case <-warm:
		case <-time.After(30 * time.Second):
			t.Fatal("the warm-up message was not handled")
		}
		// 500 messages a second over 20 keys, for the failure and 1s more.
		const perTick = 25
		ticks := int((fail + time.Second) / (50 * time.Millisecond))
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := range ticks {
			msgs := make([]*message.Message, perTick)
			for j := range msgs {
				msgs[j] = message.NewMessage(watermillUUID(), []byte(strconv.FormatInt(time.Now().UnixNano(), 10)))
				msgs[j].Metadata.Set(schema.KeyPartitionKey, "k"+strconv.Itoa((i*perTick+j)%20))
			}
			if err := pub.Publish(context.Background(), topic, msgs...); err != nil {
				t.Fatal(err)
			}
			<-tick.C
		}
		total := int64(ticks * perTick)
		waitFor(t, 60*time.Second, "all but k0 handled", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return int64(len(lat)) >= total*19/20
		})
		stop()
		mu.Lock()
		defer mu.Unlock()
		slices.Sort(lat)
		return lat[len(lat)*99/100]
	}
	// A latency bound on a shared 2-core machine (CI runs packages in
	// parallel, under -race) is at the mercy of the scheduler: the pair of
	// runs is measured up to three times, and the property fails only
	// when no pair keeps it. A stuck key that held back the others would
	// fail every pair (its 5s failure would show in the p99). A floor
	// keeps sub-millisecond noise from deciding.
	var base, failing time.Duration
	for attempt := 1; attempt <= 3; attempt++ {
		base = run(0)
		failing = run(5 * time.Second)
		t.Logf("attempt %d: p99 latency of the other keys: %v without the failure, %v with k0 failing for 5s", attempt, base, failing)
		if failing <= 2*max(base, 20*time.Millisecond) {
			return
		}
	}
	t.Errorf("p99 latency of the other keys %v with k0 failing, more than 2x the %v without, in three pairs of runs", failing, base)
}

func watermillUUID() string { return fmt.Sprintf("%016x%016x", rand.Uint64(), rand.Uint64()) }

// Records with no envelope, a broken one, an empty value or a huge header
// are dead-lettered with a reason after one attempt each; the consumer
// goes on with the records behind them.
func TestKafkaConsumerBadInput(t *testing.T) {
	addrs := kafkaCluster(t, 1)
	topic := bustest.Name("bad")
	type order struct {
		ID string `json:"id"`
	}
	reg := schema.NewRegistry()
	schema.Register[order](reg, "com.example.order.created", 1)

	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	uuidH := func(id string) kgo.RecordHeader {
		return kgo.RecordHeader{Key: "_watermill_message_uuid", Value: []byte(id)}
	}
	good, err := reg.NewMessage(context.Background(), order{ID: "o-1"})
	if err != nil {
		t.Fatal(err)
	}
	goodH := []kgo.RecordHeader{uuidH("good")}
	for k, v := range good.Metadata {
		goodH = append(goodH, kgo.RecordHeader{Key: k, Value: []byte(v)})
	}
	huge := append(slices.Clone(goodH[1:]), uuidH("huge"), kgo.RecordHeader{Key: "x-huge", Value: make([]byte, 200<<10)})
	broken := []kgo.RecordHeader{uuidH("broken"), {Key: "ce_specversion", Value: []byte("0.3")}, {Key: "ce_type", Value: []byte("")}}
	recs := []*kgo.Record{
		{Topic: topic, Value: []byte("garbage"), Headers: []kgo.RecordHeader{uuidH("noenv")}},
		{Topic: topic, Value: good.Payload, Headers: broken},
		{Topic: topic, Value: nil, Headers: append(slices.Clone(goodH[1:]), uuidH("empty"))},
		{Topic: topic, Value: []byte("{not json"), Headers: huge},
		{Topic: topic, Value: good.Payload, Headers: goodH},
	}
	if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}

	b := consumerBus(t, addrs, bustest.Name("g"), kafka.Config{})
	var attempts sync.Map
	var handled atomic.Bool
	count := func(h message.HandlerFunc) message.HandlerFunc {
		return func(m *message.Message) ([]*message.Message, error) {
			n, _ := attempts.LoadOrStore(m.UUID, new(atomic.Int64))
			n.(*atomic.Int64).Add(1)
			return h(m)
		}
	}
	err = b.Handle("h", topic, func(ctx context.Context, m *message.Message) error {
		if _, _, err := schema.DecodeAs[order](reg, m); err != nil {
			return err
		}
		handled.Store(true)
		return nil
	}, bus.HandlerMiddleware(count))
	if err != nil {
		t.Fatal(err)
	}
	runConsumerBus(t, b)
	waitFor(t, 30*time.Second, "the good record handled", handled.Load)

	dls, err := b.DeadLetters(bustest.Context(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"noenv": true, "broken": true, "empty": true, "huge": true}
	for len(want) > 0 {
		select {
		case dl, ok := <-dls:
			if !ok {
				t.Fatalf("dead letters closed; missing %v", want)
			}
			if r := dl.Metadata.Get(middleware.KeyDLQReason); r == "" {
				t.Errorf("dead letter %s has no reason", dl.UUID)
			}
			delete(want, dl.UUID)
			dl.Ack()
		case <-time.After(20 * time.Second):
			t.Fatalf("missing dead letters %v", want)
		}
	}
	attempts.Range(func(k, v any) bool {
		if n := v.(*atomic.Int64).Load(); n != 1 {
			t.Errorf("%s attempted %d times, want 1", k, n)
		}
		return true
	})
}

// A partition whose handler is stuck holds at most its share of the
// in-flight bound and is paused (busline.kafka.paused_partitions), while the
// other partition's records flow through the rest of the bound; the
// subscription never holds more than MaxInFlight records
// (busline.kafka.in_flight), and when the stuck handler is released every
// record is handled.
func TestKafkaConsumerInFlightBound(t *testing.T) {
	const perPart, maxInFlight = 10, 40
	addrs := kafkaCluster(t, 2)
	topic := bustest.Name("bound")
	keys := [2]string{}
	tp := kgo.StickyKeyPartitioner(nil).ForTopic(topic) // murmur2, as the bus's producer
	for i := 0; keys[0] == "" || keys[1] == ""; i++ {
		k := "k" + strconv.Itoa(i)
		keys[tp.Partition(&kgo.Record{Key: []byte(k)}, 2)] = k
	}
	const n = 300
	publishSeq(t, addrs, 2, topic, "b", n, func(i int) string { return keys[i%2] })

	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	b, err := bus.New(bus.Config{Broker: bus.BrokerKafka, Group: bustest.Name("g"), Kafka: kafka.Config{
		Brokers: addrs, Partitions: 2, MaxInFlight: maxInFlight, MaxInFlightPerPartition: perPart,
	}}, bus.WithLogger(slog.New(slog.DiscardHandler)), bus.WithMeterProvider(mp))
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var releaseOnce sync.Once
	defer releaseOnce.Do(func() { close(release) })
	var handled [2]atomic.Int64
	err = b.Handle("h", topic, func(ctx context.Context, m *message.Message) error {
		p := 0
		if m.Metadata.Get(schema.KeyPartitionKey) == keys[1] {
			p = 1
		}
		if p == 0 {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		handled[p].Add(1)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	runConsumerBus(t, b)
	gauge := func(name string) int64 {
		ms := metricsOf(t, reader)
		if _, ok := ms[name]; !ok {
			return 0
		}
		return sumOf(t, ms, name, map[string]string{telemetry.MetricKafkaInFlight: "{record}", telemetry.MetricKafkaPausedPartitions: "{partition}"}[name], nil)
	}
	paused := false
	waitFor(t, 60*time.Second, "the free partition handled while the other is stuck and paused", func() bool {
		if f := gauge(telemetry.MetricKafkaInFlight); f > maxInFlight {
			t.Fatalf("%d records in flight, bound %d", f, maxInFlight)
		}
		paused = paused || gauge(telemetry.MetricKafkaPausedPartitions) == 1
		return paused && handled[1].Load() == n/2
	})
	if handled[0].Load() != 0 {
		t.Fatalf("stuck partition handled %d", handled[0].Load())
	}
	releaseOnce.Do(func() { close(release) })
	waitFor(t, 60*time.Second, "every record handled after the release", func() bool {
		return handled[0].Load() == n/2
	})
	if p := gauge(telemetry.MetricKafkaPausedPartitions); p != 0 {
		t.Errorf("%d partitions still paused", p)
	}
}

// A stock watermill-kafka v3 subscriber reads what the bus publishes, the
// message UUID included; the bus reads what a stock watermill-kafka
// publisher wrote, UUID and metadata included.
func TestKafkaConsumerWireCompat(t *testing.T) {
	addrs := kafkaCluster(t, 1)
	ctx := bustest.Context(t, 60*time.Second)

	t.Run("BuslineToWatermill", func(t *testing.T) {
		topic := bustest.Name("to-watermill")
		pub := consumerBus(t, addrs, bustest.Name("pub"), kafka.Config{})
		defer pub.Close(context.Background())
		sent := message.NewMessage("busline-1", []byte(`{"n":1}`))
		sent.Metadata.Set("tenant", "acme")
		if err := pub.Publish(ctx, topic, sent); err != nil {
			t.Fatal(err)
		}
		sc := wkafka.DefaultSaramaSubscriberConfig()
		sc.Consumer.Offsets.Initial = sarama.OffsetOldest
		sub, err := wkafka.NewSubscriber(wkafka.SubscriberConfig{Brokers: addrs, Unmarshaler: wkafka.DefaultMarshaler{},
			OverwriteSaramaConfig: sc, ConsumerGroup: bustest.Name("wm")}, watermill.NopLogger{})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		ch, err := sub.Subscribe(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-ch:
			m.Ack()
			if m.UUID != "busline-1" || string(m.Payload) != `{"n":1}` || m.Metadata.Get("tenant") != "acme" ||
				m.Metadata.Get(schema.KeyID) != "busline-1" {
				t.Errorf("watermill read %s %q %v", m.UUID, m.Payload, m.Metadata)
			}
		case <-ctx.Done():
			t.Fatal("watermill received nothing")
		}
	})

	t.Run("WatermillToBusline", func(t *testing.T) {
		topic := bustest.Name("from-watermill")
		wp, err := wkafka.NewPublisher(wkafka.PublisherConfig{Brokers: addrs, Marshaler: wkafka.DefaultMarshaler{}}, watermill.NopLogger{})
		if err != nil {
			t.Fatal(err)
		}
		defer wp.Close()
		sent := message.NewMessage("watermill-1", []byte("plain"))
		sent.Metadata.Set("tenant", "acme")
		if err := wp.Publish(topic, sent); err != nil {
			t.Fatal(err)
		}
		b := consumerBus(t, addrs, bustest.Name("g"), kafka.Config{})
		got := make(chan *message.Message, 1)
		if err := b.Handle("h", topic, func(_ context.Context, m *message.Message) error {
			got <- m
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		runConsumerBus(t, b)
		select {
		case m := <-got:
			if m.UUID != "watermill-1" || string(m.Payload) != "plain" || m.Metadata.Get("tenant") != "acme" {
				t.Errorf("bus read %s %q %v", m.UUID, m.Payload, m.Metadata)
			}
		case <-ctx.Done():
			t.Fatal("the bus received nothing")
		}
	})
}

// With batch delivery a handlers.Batch handler gets the records of a
// partition as whole batches, in order, each acked only after the batch
// function returned; a batch that failed once is retried whole; a batch
// holding a poison record is, after its retries, handed out record by
// record, each retried and dead-lettered on its own: the poison record goes
// to the dead-letter topic alone, and nothing is lost.
func TestKafkaConsumerBatch(t *testing.T) {
	const n, size = 1000, 100
	addrs := kafkaCluster(t, 2)
	topic := bustest.Name("batch")
	type ev struct {
		N int `json:"n"`
	}
	reg := schema.NewRegistry()
	schema.Register[ev](reg, "com.example.batch.item", 1)
	pub := consumerBus(t, addrs, bustest.Name("pub"), kafka.Config{Partitions: 2})
	var msgs []*message.Message
	for i := range n {
		m, err := reg.NewMessage(context.Background(), ev{N: i})
		if err != nil {
			t.Fatal(err)
		}
		if i == 500 {
			m.Payload = []byte("{poison")
		}
		m.Metadata.Set(schema.KeyPartitionKey, "k"+strconv.Itoa(i%2))
		msgs = append(msgs, m)
	}
	if err := pub.Publish(context.Background(), topic, msgs...); err != nil {
		t.Fatal(err)
	}
	pub.Close(context.Background())

	var (
		mu       sync.Mutex
		seen     = map[int]int{}
		batches  [][]int
		failOnce = true
	)
	bt := handlers.Batch(reg, handlers.BatchConfig{Size: size}, func(_ context.Context, items []handlers.Item[ev]) error {
		mu.Lock()
		defer mu.Unlock()
		var ns []int
		for _, it := range items {
			ns = append(ns, it.Event.N)
		}
		batches = append(batches, ns)
		for _, x := range ns {
			if x == 250 && failOnce {
				failOnce = false
				return errors.New("downstream hiccup")
			}
		}
		for _, x := range ns {
			seen[x]++
		}
		return nil
	})
	b := consumerBus(t, addrs, bustest.Name("g"), kafka.Config{Partitions: 2})
	if err := b.Handle("h", topic, bt.Handle, bus.WithBatchDelivery(bt.Size()), bus.HandlerStack(func(c *middleware.StackConfig) {
		c.Retry.InitialInterval = time.Millisecond
	})); err != nil {
		t.Fatal(err)
	}
	runConsumerBus(t, b)
	waitFor(t, 60*time.Second, "all but the poison handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == n-1
	})
	dls, err := b.DeadLetters(bustest.Context(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case dl := <-dls:
		if dl.UUID != msgs[500].UUID || string(dl.Payload) != "{poison" || dl.Metadata.Get(middleware.KeyDLQReason) == "" {
			t.Errorf("dead letter %s %q reason %q, want the poison record", dl.UUID, dl.Payload, dl.Metadata.Get(middleware.KeyDLQReason))
		}
		dl.Ack()
	case <-time.After(20 * time.Second):
		t.Fatal("no dead letter")
	}

	mu.Lock()
	defer mu.Unlock()
	largest, twice := 0, 0
	for _, ns := range batches {
		largest = max(largest, len(ns))
		for i := 1; i < len(ns); i++ {
			if ns[i] <= ns[i-1] {
				t.Fatalf("batch out of partition order: %v", ns)
			}
		}
	}
	for _, k := range seen {
		twice += k - 1
	}
	if largest != size {
		t.Errorf("largest batch %d, want %d: the records of a poll did not come as one batch", largest, size)
	}
	sizes := map[int]int{}
	for _, ns := range batches {
		sizes[len(ns)]++
	}
	// The batch with the poison record is split: its other records come
	// one by one (fewer than size); the others come whole (the failing
	// one twice). How many records a batch holds depends on what the
	// polls had queued.
	if sizes[size] < 1 || sizes[1] == 0 || sizes[1] >= size || len(batches) > 2*n/size+size {
		t.Errorf("batch sizes %v: %d calls for %d records", sizes, len(batches), n)
	}
	t.Logf("%d batch calls (sizes: calls %v), %d events seen twice", len(batches), sizes, twice)
}

// When the group coordinator says the member is unknown (its session
// expired), the member's partitions are lost: nothing is committed for
// them, their in-flight results are dropped (busline.kafka.lost_partitions
// counts them), the member rejoins, and every record is still handled.
func TestKafkaConsumerLostPartitions(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(2),
		kfake.GroupMinSessionTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	addrs := c.ListenAddrs()
	const n = 2000
	topic := bustest.Name("lost")
	publishSeq(t, addrs, 2, topic, "l", n, func(i int) string { return "k" + strconv.Itoa(i%16) })

	var armed, fired atomic.Bool
	c.ControlKey(int16(kmsg.Heartbeat), func(r kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if !armed.Load() || fired.Swap(true) {
			return nil, nil, false
		}
		resp := r.(*kmsg.HeartbeatRequest).ResponseKind().(*kmsg.HeartbeatResponse)
		resp.ErrorCode = kerr.UnknownMemberID.Code
		return resp, nil, true
	})

	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	b, err := bus.New(bus.Config{Broker: bus.BrokerKafka, Group: bustest.Name("g"), Kafka: kafka.Config{
		Brokers: addrs, Partitions: 2, SessionTimeout: time.Second,
	}}, bus.WithLogger(slog.New(slog.DiscardHandler)), bus.WithMeterProvider(mp))
	if err != nil {
		t.Fatal(err)
	}
	var seen counts
	err = b.Handle("h", topic, func(ctx context.Context, m *message.Message) error {
		tm := time.NewTimer(time.Millisecond) // the work: 2,000 records take about a second
		<-tm.C
		if seen.add(m.UUID) >= 300 {
			armed.Store(true)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	runConsumerBus(t, b)
	waitFor(t, 60*time.Second, "every record handled after the loss", func() bool { return seen.distinct() == n })
	if !fired.Load() {
		t.Fatal("the heartbeat never failed")
	}
	if lost := sumOf(t, metricsOf(t, reader), telemetry.MetricKafkaLostPartitions, "{partition}", nil); lost < 1 {
		t.Errorf("busline.kafka.lost_partitions = %d, want >= 1", lost)
	}
	t.Logf("%d records handled twice after the loss", len(seen.twice()))
}

// A plain handler registered with batch delivery by mistake gets carriers
// it does not take: their acks must not count their records as handled.
// Every record reaches the handler on its own, with its payload.
func TestKafkaConsumerBatchDeliveryToAPlainHandler(t *testing.T) {
	const n = 200
	addrs := kafkaCluster(t, 1)
	topic := bustest.Name("plain-batch")
	publishSeq(t, addrs, 1, topic, "p", n, nil)
	b := consumerBus(t, addrs, bustest.Name("g"), kafka.Config{})
	var seen counts
	var carriers atomic.Int64
	if err := b.Handle("h", topic, func(_ context.Context, m *message.Message) error {
		if len(m.Payload) == 0 {
			carriers.Add(1) // a carrier: no event of its own
			return nil
		}
		seen.add(m.UUID)
		return nil
	}, bus.WithBatchDelivery(50)); err != nil {
		t.Fatal(err)
	}
	runConsumerBus(t, b)
	waitFor(t, 60*time.Second, "every record handled on its own", func() bool { return seen.distinct() == n })
	t.Logf("%d carriers acked by the plain handler, then split", carriers.Load())
}

// Close does not wait for a dead letter that a DeadLetters reader, which
// stopped reading, was never handed: a record the router did not take is
// not in flight.
func TestKafkaConsumerCloseWithAnIdleDeadLetterReader(t *testing.T) {
	addrs := kafkaCluster(t, 1)
	b := consumerBus(t, addrs, bustest.Name("g"), kafka.Config{})
	if err := b.Handle("noop", bustest.Name("t"), func(context.Context, *message.Message) error { return nil }); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- b.Run(context.Background()) }()
	<-b.Running()
	for range 3 {
		if err := b.Publish(context.Background(), b.Config().DeadLetterTopic, message.NewMessage("", []byte("x"))); err != nil {
			t.Fatal(err)
		}
	}
	ch, err := b.DeadLetters(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-ch:
		m.Ack() // and read no more
	case <-time.After(20 * time.Second):
		t.Fatal("no dead letter")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := b.Close(ctx); err != nil {
		t.Errorf("Close: %v (it waited for a dead letter nobody was handed)", err)
	}
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

// In "key" ordering a record nacked while its partition drains (here: the
// bus is closing) is given back with the records behind it on its key's
// lane: none of them runs again or later in this run, the drain does not
// wait for them (Close returns nil), and the group's next consumer gets
// them, in order. Before, the nacked record was handed out again and
// again until Close's deadline.
func TestKafkaConsumerGivesBackWhileDraining(t *testing.T) {
	addrs := kafkaCluster(t, 1)
	topic := bustest.Name("giveback")
	// a-00000, b-00001, a-00002, b-00003, a-00004 on one partition.
	publishSeq(t, addrs, 1, topic, "r", 5, func(i int) string { return []string{"a", "b"}[i%2] })
	group := bustest.Name("g")
	oneAttempt := bus.HandlerStack(func(c *middleware.StackConfig) { c.Retry = middleware.RetryConfig{MaxAttempts: 1} })

	b := consumerBus(t, addrs, group, kafka.Config{})
	var mu sync.Mutex
	var handled []string
	started := make(chan struct{})
	var startOnce sync.Once
	if err := b.Handle("h", topic, func(ctx context.Context, m *message.Message) error {
		mu.Lock()
		handled = append(handled, m.UUID)
		mu.Unlock()
		if m.UUID != "r-00000" {
			return nil
		}
		startOnce.Do(func() { close(started) })
		// Fail once Close has begun (the bus reports it).
		for !errors.Is(b.Health(context.Background()), bus.ErrClosed) {
			runtime.Gosched()
		}
		return middleware.Redeliver(errors.New("downstream down"))
	}, bus.WithOrdering(bus.OrderKey), oneAttempt); err != nil {
		t.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- b.Run(context.Background()) }()
	<-started
	ctx := bustest.Context(t, 30*time.Second)
	if err := b.Close(ctx); err != nil {
		t.Fatalf("Close = %v, want nil: the drain waited for a record given back", err)
	}
	if err := <-runErr; err != nil {
		t.Fatalf("Run = %v", err)
	}
	mu.Lock()
	got := slices.Clone(handled)
	mu.Unlock()
	for _, id := range got {
		if id == "r-00002" || id == "r-00004" {
			t.Errorf("%s, behind the nacked r-00000 on key a, ran in the closing run: %v", id, got)
		}
	}
	if n := slices.Index(got, "r-00000"); n < 0 || slices.Index(got[n+1:], "r-00000") >= 0 {
		t.Errorf("r-00000 ran %d times in the closing run, want once: %v", strings.Count(strings.Join(got, ","), "r-00000"), got)
	}

	// The next consumer of the group gets key a's records, in order.
	b2 := consumerBus(t, addrs, group, kafka.Config{})
	var keyA []string
	var mu2 sync.Mutex
	done := make(chan struct{})
	if err := b2.Handle("h", topic, func(ctx context.Context, m *message.Message) error {
		mu2.Lock()
		defer mu2.Unlock()
		if strings.HasSuffix(m.UUID, "0") || strings.HasSuffix(m.UUID, "2") || strings.HasSuffix(m.UUID, "4") {
			keyA = append(keyA, m.UUID)
			if len(keyA) == 3 {
				close(done)
			}
		}
		return nil
	}, bus.WithOrdering(bus.OrderKey)); err != nil {
		t.Fatal(err)
	}
	runConsumerBus(t, b2)
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatalf("key a's records given back did not come to the next consumer: got %v", keyA)
	}
	mu2.Lock()
	defer mu2.Unlock()
	if want := []string{"r-00000", "r-00002", "r-00004"}; !slices.Equal(keyA, want) {
		t.Errorf("next consumer got key a as %v, want %v", keyA, want)
	}
}
