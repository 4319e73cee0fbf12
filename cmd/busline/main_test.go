package main

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/internal/testserver"
	"github.com/busline/busline/middleware"
	"github.com/busline/busline/schema"
)

// reasonError is a handler error with a dead-letter reason (returned permanent).
type reasonError string

func (e reasonError) Error() string     { return "rejected: " + string(e) }
func (e reasonError) ErrorType() string { return string(e) }

func TestKafka(t *testing.T) {
	addrs := testserver.Kafka(t, 1)
	t.Setenv("BUSLINE_BROKER", "kafka")
	t.Setenv("BUSLINE_KAFKA_BROKERS", strings.Join(addrs, ","))
	testCLI(t, func(string, string) {})
}

func TestAMQP(t *testing.T) {
	url := testserver.AMQPURL(t)
	t.Setenv("BUSLINE_BROKER", "amqp")
	t.Setenv("BUSLINE_AMQP_URL", url)
	t.Setenv("BUSLINE_AMQP_NACK_DELAY", "100ms")
	testCLI(t, func(topic, group string) {
		t.Cleanup(func() { deleteTopology(t, url, topic, group) })
	})
}

func TestMemoryIsPointless(t *testing.T) {
	t.Setenv("BUSLINE_BROKER", "")
	out, errOut, code := runCLI(t, "list")
	if code != exitUsage || !strings.Contains(errOut, "in-process broker") {
		t.Errorf("list on memory: code %d, stdout %q, stderr %q", code, out, errOut)
	}
	_, errOut, code = runCLI(t, "-help")
	if code != exitOK || !strings.Contains(errOut, "in-process broker (memory, the default) is pointless") {
		t.Errorf("-help: code %d, %q", code, errOut)
	}
}

func TestUsage(t *testing.T) {
	t.Setenv("BUSLINE_BROKER", "")
	for _, args := range [][]string{
		{}, {"frobnicate"}, {"purge"}, {"replay", "-all", "-id", "x"}, {"replay", "-all", "-rate", "fast"},
		{"purge", "-filter", "colour=red"}, {"show"}, {"list", "extra"},
	} {
		if _, _, code := runCLI(t, args...); code != exitUsage {
			t.Errorf("busline %v: code %d, want %d", args, code, exitUsage)
		}
	}
}

func runCLI(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(bustest.Context(t, 2*time.Minute), append([]string{"-idle", "20s"}, args...), &o, &e)
	t.Logf("$ busline %s  (exit %d)\n%s%s", strings.Join(args, " "), code, o.String(), e.String())
	return o.String(), e.String(), code
}

// mustCLI runs the CLI and fails the test unless it exits 0.
func mustCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := runCLI(t, args...)
	if code != exitOK {
		t.Fatalf("busline %v: exit %d: %s", args, code, errOut)
	}
	return out
}

// listedIDs returns the ids of a list output, in order.
func listedIDs(out string) []string {
	var ids []string
	for _, line := range strings.Split(out, "\n")[1:] {
		if f := strings.Fields(line); len(f) == 6 {
			ids = append(ids, f[0])
		}
	}
	return ids
}

// testCLI dead-letters three messages with a running bus, then lists,
// shows, replays and purges them with the CLI.
func testCLI(t *testing.T, cleanup func(topic, group string)) {
	topic := bustest.Name("orders")
	group := bustest.Name("svc")
	dlq := bustest.Name("dlq")
	t.Setenv("BUSLINE_GROUP", group)
	t.Setenv("BUSLINE_DEAD_LETTER_TOPIC", dlq)
	cleanup(topic, group)
	cleanup(dlq, "")

	cfg, err := bus.ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	dead := make(chan string, 10)
	b, err := bus.New(cfg, bus.WithStack(func(c *middleware.StackConfig) {
		c.DeadLetter.Observer = deadObserver{dead: dead}
	}))
	if err != nil {
		t.Fatal(err)
	}
	var broken atomic.Bool
	broken.Store(true)
	handled := make(chan *message.Message, 10)
	err = b.Handle("billing", topic, func(ctx context.Context, m *message.Message) error {
		if broken.Load() {
			return middleware.Permanent(reasonError(m.Metadata.Get("want_reason")))
		}
		handled <- m
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := bustest.Context(t, 2*time.Minute)
	runErr := make(chan error, 1)
	go func() { runErr <- b.Run(ctx) }()
	t.Cleanup(func() {
		if err := b.Close(context.Background()); err != nil {
			t.Error(err)
		}
		<-runErr
	})

	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	var ids []string
	for i, reason := range []string{"bad_input", "bad_input", "out_of_stock"} {
		m := message.NewMessage(fmt.Sprintf("%s-msg-%d", group, i+1), []byte(fmt.Sprintf(`{"n":%d}`, i+1)))
		m.Metadata.Set("want_reason", reason)
		m.Metadata.Set(schema.KeyCorrelationID, "corr-"+m.UUID)
		m.Metadata.Set("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
		if err := b.Publish(ctx, topic, m); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, m.UUID)
	}
	for range ids {
		select {
		case <-dead:
		case <-ctx.Done():
			t.Fatal("messages were not dead-lettered")
		}
	}

	// list, twice: reading does not consume.
	for range 2 {
		out := mustCLI(t, "list")
		if got := listedIDs(out); strings.Join(got, " ") != strings.Join(ids, " ") {
			t.Fatalf("list: ids %v, want %v", got, ids)
		}
		for _, want := range []string{"bad_input", "out_of_stock", "billing", topic, "3 dead letters in " + dlq} {
			if !strings.Contains(out, want) {
				t.Errorf("list: no %q", want)
			}
		}
		if !regexp.MustCompile(`(?m)^` + ids[2] + ` +out_of_stock +billing +` + regexp.QuoteMeta(topic) + ` +1 +20\d\d-`).MatchString(out) {
			t.Errorf("list: bad row for %s", ids[2])
		}
	}

	out := mustCLI(t, "show", ids[2])
	for _, want := range []string{
		"id:            " + ids[2], "reason:        out_of_stock", "error:         rejected: out_of_stock",
		"handler:       billing", "topic:         " + topic, "attempts:      1",
		"  ce_correlationid: corr-" + ids[2], "  traceparent: 00-" + traceID, "payload (7 bytes):\n{\"n\":3}",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("show: no %q", want)
		}
	}
	if _, _, code := runCLI(t, "show", "no-such-id"); code != exitError {
		t.Errorf("show of an unknown id: exit %d", code)
	}

	// Dry runs change nothing.
	out = mustCLI(t, "replay", "-filter", "reason=out_of_stock", "-dry-run")
	if !strings.Contains(out, "would replay "+ids[2]) || !strings.Contains(out, "1 of 3") || strings.Contains(out, ids[0]) {
		t.Errorf("replay -dry-run: %q", out)
	}
	if got := listedIDs(mustCLI(t, "list")); len(got) != 3 {
		t.Fatalf("after a dry run: %v", got)
	}

	// Replay the third: the two before it are moved to the end of the
	// backlog; the handler (fixed now) processes the replay in the same
	// process, so dedup did not swallow it; correlation and trace kept.
	broken.Store(false)
	out = mustCLI(t, "replay", "-filter", "reason=out_of_stock", "-rate", "5/s")
	for _, want := range []string{"kept " + ids[0], "kept " + ids[1], "replayed " + ids[2] + " to " + topic, "replayed 1 of 1"} {
		if !strings.Contains(out, want) {
			t.Errorf("replay: no %q", want)
		}
	}
	select {
	case m := <-handled:
		if m.UUID != ids[2] || m.Metadata.Get(schema.KeyCorrelationID) != "corr-"+ids[2] ||
			!strings.Contains(m.Metadata.Get("traceparent"), traceID) {
			t.Errorf("handled %s, correlation %q, traceparent %q", m.UUID, m.Metadata.Get(schema.KeyCorrelationID), m.Metadata.Get("traceparent"))
		}
		if m.Metadata.Get(middleware.KeyDLQReason) != "" || m.Metadata.Get(middleware.KeyReplayCount) != "1" {
			t.Errorf("replayed metadata: %v", m.Metadata)
		}
	case <-ctx.Done():
		t.Fatal("the replayed message was not handled")
	}
	if got := listedIDs(mustCLI(t, "list")); strings.Join(got, " ") != ids[0]+" "+ids[1] {
		t.Fatalf("after replay: %v, want %v", got, ids[:2])
	}

	// Purge one by id, then the rest.
	out = mustCLI(t, "purge", "-id", ids[0], "-dry-run")
	if !strings.Contains(out, "would purge "+ids[0]) || strings.Contains(out, "would purge "+ids[1]) {
		t.Errorf("purge -dry-run: %q", out)
	}
	if out := mustCLI(t, "purge", "-id", ids[0]); !strings.Contains(out, "purged "+ids[0]) || strings.Contains(out, "kept") {
		t.Errorf("purge -id: %q", out)
	}
	if got := listedIDs(mustCLI(t, "list")); strings.Join(got, " ") != ids[1] {
		t.Fatalf("after purge -id: %v", got)
	}
	mustCLI(t, "purge", "-all")
	if out := mustCLI(t, "list"); !strings.Contains(out, "no dead letters in "+dlq) {
		t.Errorf("after purge -all: %q", out)
	}
	select {
	case m := <-handled:
		t.Errorf("unexpected handling of %s", m.UUID)
	default:
	}
}

// deleteTopology deletes the RabbitMQ queue of group on topic ("" for
// the dead-letter group) and the topic's exchange.
func deleteTopology(t *testing.T, url, topic, group string) {
	q := amqp.QueueName(topic, bus.DeadLetterGroup)
	if group != "" {
		q = amqp.QueueName(topic, group+".billing")
	}
	testserver.DeleteAMQP(t, url, []string{q}, []string{amqp.ExchangeName(topic)})
}

// show keeps its layout for a multi-line error (an error that wraps
// others with errors.Join): its continuation lines are indented under the
// value, as are those of a multi-line header.
func TestInteropShowIndentsMultiLineValues(t *testing.T) {
	m := message.NewMessage("dl-1", []byte("{}"))
	m.Metadata.Set(middleware.KeyDLQReason, "handler_error")
	m.Metadata.Set(middleware.KeyDLQError, "charge failed\ncard declined\ntry later")
	var out bytes.Buffer
	printDeadLetter(&out, m)
	want := "error:         charge failed\n" +
		"               card declined\n" +
		"               try later\n" +
		"handler:       -\n"
	if !strings.Contains(out.String(), want) {
		t.Errorf("show output:\n%s\nwant it to contain:\n%s", out.String(), want)
	}
	if !strings.Contains(out.String(), "  "+middleware.KeyDLQError+": charge failed\n    card declined\n    try later\n") {
		t.Errorf("header lines not indented:\n%s", out.String())
	}
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if l != "" && !strings.HasPrefix(l, " ") && !strings.Contains(l, ":") && l != "{}" {
			t.Errorf("unindented continuation line %q", l)
		}
	}
}

// show lists every round a dead letter went through: its attempts, its
// error and the delay that followed it.
func TestDelayedRetryShowListsRounds(t *testing.T) {
	m := message.NewMessage("dl-2", []byte("{}"))
	m.Metadata.Set(middleware.KeyDLQReason, middleware.ReasonRetriesExhausted)
	m.Metadata.Set(middleware.KeyDLQAttempts, "7")
	m.Metadata.Set(middleware.KeyDLQRounds, "2")
	m.Metadata.Set(middleware.KeyRetryHistory,
		`[{"attempts":5,"error":"db down","reason":"handler_error","failed_at":"2026-12-08T01:00:00Z","delay":"1s"},`+
			`{"attempts":2,"error":"db still down","reason":"timeout","failed_at":"2026-12-08T01:00:03Z"}]`)
	var out bytes.Buffer
	printDeadLetter(&out, m)
	for _, want := range []string{
		"rounds:        2\n",
		"  round 1:     5 attempt(s), failed 2026-12-08T01:00:00Z: db down (handler_error), then waited 1s\n",
		"  round 2:     2 attempt(s), failed 2026-12-08T01:00:03Z: db still down (timeout)\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("show output:\n%s\nwant it to contain %q", out.String(), want)
		}
	}
}

// deadObserver sends the UUID of every message the stack dead-letters.
type deadObserver struct {
	middleware.NopObserver
	dead chan<- string
}

func (o deadObserver) DeadLettered(i middleware.DeadLetterInfo) { o.dead <- i.Message.UUID }
