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
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/middleware"
	"github.com/busline/busline/schema"
)

// The tests of Kafka transactions (bus.WithKafkaTransactions). Run them
// alone with -run TestKafkaTransaction.

const (
	txnRecords     = 10000
	txnPoisonEvery = 500
)

// A consume-then-publish handler with Kafka transactions (two outputs per
// input, every 500th input poison and dead-lettered, random transient
// failures after publishing, retried by the stack), killed with SIGKILL at
// 20 random points of a 10,000-record stream and restarted until the group
// committed everything: read with read_committed, the output topic holds
// each input's two outputs exactly once and the dead-letter topic each
// poison input exactly once, although inputs were handled more than once
// (the effects file counts the handlings) and read_uncommitted sees the
// aborted outputs.
func TestKafkaTransactionCrash(t *testing.T) {
	const kills = 20
	addrs := kafkaCluster(t, 4)
	in, out, dlq := bustest.Name("txin"), bustest.Name("txout"), bustest.Name("txdlq")
	publishSeq(t, addrs, 4, in, "x", txnRecords, func(i int) string { return "k" + strconv.Itoa(i%64) })
	effects := filepath.Join(t.TempDir(), "effects")
	group := bustest.Name("g")

	lines := func() int {
		f, err := os.Open(effects)
		if errors.Is(err, os.ErrNotExist) {
			return 0
		}
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		n := 0
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			n++
		}
		return n
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	// done: the group committed every input record.
	done := func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		lags, err := adm.Lag(ctx, group+".tx")
		if err != nil {
			return false
		}
		gl := lags[group+".tx"]
		if gl.Error() != nil || len(gl.Lag[in]) != 4 {
			return false
		}
		for _, l := range gl.Lag[in] {
			if l.Err != nil || l.Lag != 0 || l.Commit.At < 0 {
				return false
			}
		}
		return true
	}
	start := func() *exec.Cmd {
		return startChild(t, "TestKafkaTransactionCrashChild",
			"BUSLINE_TXN_CHILD=1",
			"BUSLINE_TXN_BROKERS="+strings.Join(addrs, ","),
			"BUSLINE_TXN_IN="+in,
			"BUSLINE_TXN_OUT="+out,
			"BUSLINE_TXN_DLQ="+dlq,
			"BUSLINE_TXN_GROUP="+group,
			"BUSLINE_TXN_EFFECTS="+effects,
		)
	}

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 17))
	t0 := time.Now()
	for k := range kills {
		before := lines()
		cmd := start()
		// A random point: after 1 to 600 more handlings (about 20 kills
		// over 10,000 records, with what aborted transactions redo).
		target := before + 1 + rng.IntN(600)
		waitFor(t, 60*time.Second, fmt.Sprintf("run %d reaching %d handlings", k, target), func() bool {
			return lines() >= target
		})
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	}
	cmd := start()
	waitFor(t, 120*time.Second, "every input committed", done)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("last run: %v", err)
	}
	handlings := lines()

	// A read ends at a poll that stays empty for 2s, which a machine
	// loaded by the rest of CI can reach before the first record: read
	// again until every expected output and dead letter is there, for a
	// minute at most, then count what is missing, doubled or unknown.
	wantOuts, wantDLs := 0, 0
	for i := range txnRecords {
		if i%txnPoisonEvery == 0 {
			wantDLs++
		} else {
			wantOuts += 2
		}
	}
	var outs, dls map[string]int
	for end := time.Now().Add(time.Minute); ; {
		outs = readTopicCounts(t, addrs, out, true)
		dls = readTopicCounts(t, addrs, dlq, true)
		if len(outs) >= wantOuts && len(dls) >= wantDLs || time.Now().After(end) {
			break
		}
	}
	missing, dups, stray := 0, 0, 0
	for i := range txnRecords {
		id := fmt.Sprintf("x-%05d", i)
		if i%txnPoisonEvery == 0 {
			if c := dls[id]; c != 1 {
				t.Errorf("poison input %s is %d times in the dead-letter topic, want once", id, c)
			}
			if outs[id+"-a"]+outs[id+"-b"] != 0 {
				t.Errorf("poison input %s has outputs", id)
			}
			continue
		}
		for _, o := range []string{id + "-a", id + "-b"} {
			switch c := outs[o]; {
			case c == 0:
				missing++
			case c > 1:
				dups += c - 1
			}
		}
	}
	for id := range outs {
		if !strings.HasPrefix(id, "x-") {
			stray++
		}
	}
	uncommitted := 0
	for _, c := range readTopicCounts(t, addrs, out, false) {
		uncommitted += c
	}
	committedOuts := 0
	for _, c := range outs {
		committedOuts += c
	}
	t.Logf("%d kills in %v: %d handlings of %d inputs; output topic: %d records read_committed, %d read_uncommitted (aborted ones included); %d dead letters",
		kills, time.Since(t0).Round(time.Millisecond), handlings, txnRecords, committedOuts, uncommitted, len(dls))
	if missing > 0 || dups > 0 || stray > 0 {
		t.Errorf("output topic read_committed: %d outputs missing, %d duplicated, %d unknown", missing, dups, stray)
	}
	if handlings <= txnRecords {
		t.Errorf("only %d handlings of %d inputs: the kills interrupted no transaction, the test proves nothing", handlings, txnRecords)
	}
}

// readTopicCounts counts the messages of topic per id
// (_watermill_message_uuid), read from its start to its end without a
// group, read_committed or read_uncommitted.
func readTopicCounts(t *testing.T, addrs []string, topic string, committed bool) map[string]int {
	t.Helper()
	iso := kgo.ReadUncommitted()
	if committed {
		iso = kgo.ReadCommitted()
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(iso))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ids := map[string]int{}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		if fs.NumRecords() == 0 {
			return ids
		}
		fs.EachRecord(func(r *kgo.Record) {
			for _, h := range r.Headers {
				if h.Key == "_watermill_message_uuid" {
					ids[string(h.Value)]++
				}
			}
		})
	}
}

// TestKafkaTransactionCrashChild is the consumer process of
// TestKafkaTransactionCrash; it runs only when that test starts it.
func TestKafkaTransactionCrashChild(t *testing.T) {
	if os.Getenv("BUSLINE_TXN_CHILD") == "" {
		t.Skip("the child process of TestKafkaTransactionCrash")
	}
	f, err := os.OpenFile(os.Getenv("BUSLINE_TXN_EFFECTS"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var mu sync.Mutex
	effect := func(id string) {
		mu.Lock()
		defer mu.Unlock()
		if _, err := f.WriteString(id + "\n"); err != nil {
			panic(err)
		}
	}
	b, err := bus.New(bus.Config{
		Broker:          bus.BrokerKafka,
		Group:           os.Getenv("BUSLINE_TXN_GROUP"),
		DeadLetterTopic: os.Getenv("BUSLINE_TXN_DLQ"),
		ShutdownTimeout: 10 * time.Second,
		Kafka: kafka.Config{
			Brokers: strings.Split(os.Getenv("BUSLINE_TXN_BROKERS"), ","), Partitions: 4,
			SessionTimeout: 500 * time.Millisecond, RebalanceTimeout: 5 * time.Second,
			MaxInFlight: 200,
			// One process at a time: the next one fences this one.
			InstanceID: "child",
		},
	}, bus.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	outTopic := os.Getenv("BUSLINE_TXN_OUT")
	err = b.Handle("tx", os.Getenv("BUSLINE_TXN_IN"), func(ctx context.Context, m *message.Message) error {
		i, _ := strconv.Atoi(strings.TrimPrefix(m.UUID, "x-"))
		effect(m.UUID)
		if i%txnPoisonEvery == 0 {
			return bus.Permanent(errors.New("poison"))
		}
		var outs []*message.Message
		for _, s := range []string{"-a", "-b"} {
			o := message.NewMessage(m.UUID+s, m.Payload)
			o.Metadata.Set(schema.KeyPartitionKey, m.Metadata.Get(schema.KeyPartitionKey))
			outs = append(outs, o)
		}
		if err := b.Publish(ctx, outTopic, outs...); err != nil {
			return err
		}
		if rand.IntN(100) == 0 {
			// Published, then failed: the retry must not publish
			// next to this attempt's outputs.
			return errors.New("transient")
		}
		return nil
	}, bus.WithKafkaTransactions(), bus.HandlerStack(func(s *middleware.StackConfig) {
		s.Retry.InitialInterval = time.Millisecond
	}))
	if err != nil {
		t.Fatal(err)
	}
	runUntilSIGTERM(t, b)
}

// Two buses with Kafka transactions in one group on a four-partition topic:
// the second joins while 10,000 records flow through the first, so the
// first loses partitions in the middle of transactions (which abort and are
// redone by the partitions' new owner). Read with read_committed, the output
// topic holds each input's output exactly once.
func TestKafkaTransactionRebalance(t *testing.T) {
	const n = 10000
	addrs := kafkaCluster(t, 4)
	in, out := bustest.Name("txrin"), bustest.Name("txrout")
	publishSeq(t, addrs, 4, in, "r", n, func(i int) string { return "k" + strconv.Itoa(i%64) })
	group := bustest.Name("g")

	var seen counts
	newMember := func(instance string) *bus.Bus {
		b := consumerBus(t, addrs, group, kafka.Config{
			Partitions: 4, SessionTimeout: time.Second, RebalanceTimeout: 5 * time.Second,
			MaxInFlight: 100, InstanceID: instance,
		})
		err := b.Handle("h", in, func(ctx context.Context, m *message.Message) error {
			t0 := time.Now()
			for time.Since(t0) < 200*time.Microsecond { // the work
			}
			seen.add(m.UUID)
			return b.Publish(ctx, out, message.NewMessage(m.UUID+"-o", m.Payload))
		}, bus.WithKafkaTransactions())
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	b1 := newMember("m1")
	stop1 := runConsumerBus(t, b1)
	waitFor(t, 60*time.Second, "2,000 handled", func() bool { return seen.distinct() >= 2000 })
	b2 := newMember("m2")
	stop2 := runConsumerBus(t, b2)
	waitFor(t, 60*time.Second, "all handled", func() bool { return seen.distinct() == n })

	// Everything handled is not everything committed: wait for every
	// output to be readable, then stop.
	var outs map[string]int
	waitFor(t, 60*time.Second, "every output committed", func() bool {
		outs = readTopicCounts(t, addrs, out, true)
		return len(outs) == n
	})
	stop2()
	stop1()
	outs = readTopicCounts(t, addrs, out, true)
	dups, redone := 0, len(seen.twice())
	for _, c := range outs {
		dups += c - 1
	}
	t.Logf("%d inputs handled more than once (aborted transactions redone), %d outputs read_committed", redone, len(outs))
	if len(outs) != n || dups != 0 {
		t.Errorf("output topic read_committed: %d distinct outputs of %d, %d duplicates", len(outs), n, dups)
	}
}

// A nacked record aborts its poll's transaction: the outputs of the records
// acked before it in the same poll are discarded and redone with it, so
// read_committed sees each output once. A publish with the context of a
// message already acked fails with kafka.ErrTransactionEnded instead of
// slipping into a later transaction.
func TestKafkaTransactionNack(t *testing.T) {
	const n = 50
	addrs := kafkaCluster(t, 1)
	in, out := bustest.Name("txnin"), bustest.Name("txnout")
	publishSeq(t, addrs, 1, in, "n", n, nil)
	b := consumerBus(t, addrs, bustest.Name("g"), kafka.Config{InstanceID: "nack"})
	var seen counts
	var (
		mu      sync.Mutex
		nacked  bool
		lateCtx context.Context
	)
	err := b.Handle("h", in, func(ctx context.Context, m *message.Message) error {
		seen.add(m.UUID)
		if err := b.Publish(ctx, out, message.NewMessage(m.UUID+"-o", m.Payload)); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		if m.UUID == "n-00030" && !nacked {
			nacked = true
			return errRedeliver
		}
		if m.UUID == "n-00000" {
			lateCtx = ctx
		}
		return nil
	}, bus.WithKafkaTransactions())
	if err != nil {
		t.Fatal(err)
	}
	runConsumerBus(t, b)
	outputsOnce(t, addrs, out, n)
	if len(seen.twice()) == 0 {
		t.Error("no record was handled twice: the nack redid nothing")
	}
	mu.Lock()
	ctx := lateCtx
	mu.Unlock()
	if err := b.Publish(ctx, out, message.NewMessage("late", nil)); !errors.Is(err, kafka.ErrTransactionEnded) {
		t.Errorf("publish with an acked message's context: %v, want kafka.ErrTransactionEnded", err)
	}
}

// The option needs "partition" ordering and no batch delivery; on a broker
// without transactions (the in-process one) it changes nothing.
func TestKafkaTransactionOptions(t *testing.T) {
	b, err := bus.New(bus.Config{}, bus.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	h := func(context.Context, *message.Message) error { return nil }
	if err := b.Handle("key", "t", h, bus.WithKafkaTransactions(), bus.WithOrdering(bus.OrderKey)); err == nil {
		t.Error("transactions with key ordering: no error")
	}
	if err := b.Handle("batch", "t", h, bus.WithKafkaTransactions(), bus.WithBatchDelivery(10)); err == nil {
		t.Error("transactions with batch delivery: no error")
	}
	got := make(chan string, 1)
	if err := b.Handle("ok", "t", func(ctx context.Context, m *message.Message) error {
		got <- m.UUID
		return nil
	}, bus.WithKafkaTransactions()); err != nil {
		t.Fatal(err)
	}
	stop := runConsumerBus(t, b)
	defer stop()
	if err := b.Publish(context.Background(), "t", message.NewMessage("m1", nil)); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-got:
		if id != "m1" {
			t.Errorf("handled %s, want m1", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("not handled on the in-process broker")
	}
}

// A graceful Close in the middle of a poll aborts its transaction after
// the running handler returned: nothing it published (a dead letter of a
// publish refused during the drain included) is committed, and the next
// consumer of the group handles the poll again, each output once.
func TestKafkaTransactionShutdown(t *testing.T) {
	const n = 20
	addrs := kafkaCluster(t, 1)
	in, out, dlq := bustest.Name("txsin"), bustest.Name("txsout"), bustest.Name("txsdlq")
	publishSeq(t, addrs, 1, in, "s", n, nil)
	group := bustest.Name("g")
	var seen counts
	member := func() *bus.Bus {
		b, err := bus.New(bus.Config{
			Broker: bus.BrokerKafka, Group: group, DeadLetterTopic: dlq, ShutdownTimeout: 10 * time.Second,
			Kafka: kafka.Config{Brokers: addrs, InstanceID: "s", SessionTimeout: time.Second},
		}, bus.WithLogger(slog.New(slog.DiscardHandler)))
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Handle("h", in, func(ctx context.Context, m *message.Message) error {
			seen.add(m.UUID)
			time.Sleep(20 * time.Millisecond)
			return b.Publish(ctx, out, message.NewMessage(m.UUID+"-o", m.Payload))
		}, bus.WithKafkaTransactions()); err != nil {
			t.Fatal(err)
		}
		return b
	}
	b1 := member()
	stop1 := runConsumerBus(t, b1)
	waitFor(t, 30*time.Second, "5 handled", func() bool { return seen.distinct() >= 5 })
	stop1()
	if dl := readTopicCounts(t, addrs, dlq, true); len(dl) > 0 {
		t.Errorf("%d dead letters committed by the shutdown", len(dl))
	}
	b2 := member()
	runConsumerBus(t, b2)
	outputsOnce(t, addrs, out, n)
}

// outputsOnce waits until topic holds n distinct messages read_committed,
// and fails t for each that it holds more than once.
func outputsOnce(t *testing.T, addrs []string, topic string, n int) {
	t.Helper()
	var outs map[string]int
	waitFor(t, 30*time.Second, "every output committed", func() bool {
		outs = readTopicCounts(t, addrs, topic, true)
		return len(outs) == n
	})
	for id, c := range outs {
		if c != 1 {
			t.Errorf("output %s read_committed %d times, want once", id, c)
		}
	}
}
