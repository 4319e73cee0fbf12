package crash_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/internal/testserver"
	"github.com/busline/busline/middleware"
)

// delayedChildEnv, when set, makes the test binary a consumer whose
// handler always fails: its value is the childConfig as JSON. It prints
// "A <uuid> <unix nanos>" for each attempt, "R <uuid> <unix nanos>" when
// the message went to the delayed tier, and "READY".
const delayedChildEnv = "BUSLINE_DELAYED_CHILD"

// The delayed tier of the durability runs: one round after 10s, two
// in-process attempts per round.
const (
	delayedWait     = 10 * time.Second
	delayedAttempts = 2
)

func delayedBusConfig(c childConfig) bus.Config {
	bc := c.busConfig()
	bc.RedeliveryDelays = []time.Duration{delayedWait}
	if bc.Broker == bus.BrokerKafka {
		bc.Kafka.Partitions = 1
		bc.Kafka.InstanceID = "delayed-consumer"
	}
	return bc
}

type lineObserver struct{ middleware.NopObserver }

func (lineObserver) Redelivered(i middleware.RedeliveryInfo) {
	fmt.Fprintf(os.Stdout, "R %s %d\n", i.Message.UUID, time.Now().UnixNano())
}

func runDelayedChild(raw string) int {
	var cfg childConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "delayed child:", err)
		return 2
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	b, err := bus.New(delayedBusConfig(cfg), bus.WithLogger(logger), bus.WithStack(func(c *middleware.StackConfig) {
		c.Retry = middleware.RetryConfig{MaxAttempts: delayedAttempts, InitialInterval: time.Millisecond}
		c.Observer = lineObserver{}
	}))
	if err != nil {
		fmt.Fprintln(os.Stderr, "delayed child:", err)
		return 2
	}
	err = b.Handle("fails", cfg.Topic, func(_ context.Context, m *message.Message) error {
		fmt.Fprintf(os.Stdout, "A %s %d\n", m.UUID, time.Now().UnixNano())
		return errors.New("downstream down")
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "delayed child:", err)
		return 2
	}
	go func() {
		<-b.Running()
		fmt.Fprintln(os.Stdout, "READY")
	}()
	if err := b.Run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "delayed child:", err)
		return 1
	}
	return 0
}

// A consumer killed with SIGKILL while its failed message waits in the
// broker's delayed tier loses nothing: the restarted consumer gets the
// message after the delay, exactly the configured number of attempts run
// in all, and the dead letter reports them.
func TestDelayedRetryCrashKafka(t *testing.T) {
	addrs := testserver.Kafka(t, 1)
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	adm := kadm.NewClient(cl)
	delayedCrash(t, func(c *childConfig) { c.Broker, c.Kafka = bus.BrokerKafka, addrs },
		// settled: the group committed past the failed record.
		func(ctx context.Context, c childConfig) (bool, error) {
			offs, err := adm.FetchOffsets(ctx, c.Group+".fails")
			if err != nil {
				return false, err
			}
			o, ok := offs.Lookup(c.Topic, 0)
			return ok && o.At >= 1, o.Err
		})
}

// TestDelayedRetryCrashAMQP is TestDelayedRetryCrashKafka on RabbitMQ.
func TestDelayedRetryCrashAMQP(t *testing.T) {
	u := testserver.AMQPURL(t)
	delayedCrash(t, func(c *childConfig) { c.Broker, c.AMQPURL = bus.BrokerAMQP, u },
		// settled: the handler queue holds no unacked delivery.
		func(ctx context.Context, c childConfig) (bool, error) {
			out, err := exec.CommandContext(ctx, "rabbitmqctl", "-q", "list_queues", "name", "messages_unacknowledged").Output()
			if err != nil {
				return false, fmt.Errorf("rabbitmqctl list_queues: %w", err)
			}
			q := amqp.QueueName(c.Topic, c.Group+".fails")
			for _, l := range strings.Split(string(out), "\n") {
				if f := strings.Fields(l); len(f) == 2 && f[0] == q {
					return f[1] == "0", nil
				}
			}
			return false, nil
		})
}

func delayedCrash(t *testing.T, set func(*childConfig), settled func(context.Context, childConfig) (bool, error)) {
	cfg := childConfig{Topic: bustest.Name("delayed-crash"), Group: bustest.Name("delayed-group")}
	set(&cfg)
	ctx := bustest.Context(t, 2*time.Minute)

	pub, err := bus.New(delayedBusConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close(context.Background()) })
	dls, err := pub.DeadLetters(ctx)
	if err != nil {
		t.Fatal(err)
	}

	lines := &delayedLines{watched: newWatched()}
	child := startDelayedChild(t, cfg, lines)
	lines.waitFor(t, ctx, "the first consumer to run", func() bool { return lines.ready > 0 })
	if err := pub.Publish(ctx, cfg.Topic, message.NewMessage("doomed", []byte("x"))); err != nil {
		t.Fatal(err)
	}
	lines.waitFor(t, ctx, "the message to go to the delayed tier", func() bool { return len(lines.redelivered) == 1 })
	for {
		ok, err := settled(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the failed message was never acked")
		case <-time.After(20 * time.Millisecond): // polling the broker's state
		}
	}
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	lines.mu.Lock()
	redeliveredAt := lines.redelivered[0]
	before := len(lines.attempts)
	lines.mu.Unlock()
	if since := time.Since(redeliveredAt); since >= delayedWait {
		t.Fatalf("the kill came %v after the redelivery, not during the %v wait", since, delayedWait)
	}

	startDelayedChild(t, cfg, lines)
	var dl *message.Message
	select {
	case dl = <-dls:
		dl.Ack()
	case <-ctx.Done():
		t.Fatalf("no dead letter; attempts %v", lines.attempts)
	}

	lines.mu.Lock()
	defer lines.mu.Unlock()
	if before != delayedAttempts {
		t.Errorf("%d attempts before the kill, want %d", before, delayedAttempts)
	}
	if got, want := len(lines.attempts), 2*delayedAttempts; got != want {
		t.Errorf("%d attempts in all, want exactly %d (%d rounds of %d)", got, want, 2, delayedAttempts)
	}
	if len(lines.attempts) > before && before > 0 {
		// The delay runs from the hand-over, which began after the
		// round's last attempt failed and ended before the R line.
		back := lines.attempts[before].Sub(lines.attempts[before-1])
		if back < delayedWait {
			t.Errorf("the message came back %v after its last failed attempt, before its delay of %v", back, delayedWait)
		}
		t.Logf("killed during the wait; the restarted consumer got the message %v after its last failed attempt (%v after the hand-over ended)",
			back.Round(time.Millisecond), lines.attempts[before].Sub(redeliveredAt).Round(time.Millisecond))
	}
	for k, want := range map[string]string{
		middleware.KeyDLQAttempts: strconv.Itoa(2 * delayedAttempts),
		middleware.KeyDLQRounds:   "2",
		middleware.KeyDLQReason:   middleware.ReasonRetriesExhausted,
	} {
		if v := dl.Metadata.Get(k); v != want {
			t.Errorf("dead letter %s = %q, want %q", k, v, want)
		}
	}
}

// delayedLines is what the delayed children printed.
type delayedLines struct {
	watched
	ready       int
	attempts    []time.Time
	redelivered []time.Time
}

func startDelayedChild(t *testing.T, cfg childConfig, l *delayedLines) *exec.Cmd {
	t.Helper()
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), delayedChildEnv+"="+string(raw))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = &lineWriter{line: func(s string) {
		l.mu.Lock()
		defer l.mu.Unlock()
		defer l.notify()
		if s == "READY" {
			l.ready++
			return
		}
		f := strings.Fields(s)
		if len(f) != 3 {
			return
		}
		ns, _ := strconv.ParseInt(f[2], 10, 64)
		switch f[0] {
		case "A":
			l.attempts = append(l.attempts, time.Unix(0, ns))
		case "R":
			l.redelivered = append(l.redelivered, time.Unix(0, ns))
		}
	}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("consumer log:\n%s", stderr.String())
		}
	})
	return cmd
}
