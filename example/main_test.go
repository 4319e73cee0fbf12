package main

import (
	"bytes"
	"context"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/internal/testserver"
)

func TestStoryMemory(t *testing.T) {
	var out bytes.Buffer
	if err := run(bustest.Context(t, 30*time.Second), config{}, &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	checkStory(t, out.String(), "example.", bus.DefaultDeadLetterTopic)
}

func TestStoryKafka(t *testing.T) {
	addrs := testserver.Kafka(t, 1)
	prefix, dlq := useEnv(t, map[string]string{
		"BUSLINE_BROKER":        "kafka",
		"BUSLINE_KAFKA_BROKERS": strings.Join(addrs, ","),
	})
	out := runFromEnv(t)
	checkStory(t, out, prefix, dlq)
}

func TestStoryAMQP(t *testing.T) {
	url := testserver.AMQPURL(t)
	prefix, dlq := useEnv(t, map[string]string{
		"BUSLINE_BROKER":   "amqp",
		"BUSLINE_AMQP_URL": url,
	})
	t.Cleanup(func() { deleteAMQPTopology(t, url, prefix, dlq) })
	out := runFromEnv(t)
	checkStory(t, out, prefix, dlq)

	// A second run on the same topics and dead-letter topic finds the
	// dead letter the first one left and removes it on the way.
	out = runFromEnv(t)
	checkStory(t, out, prefix, dlq)
	if !strings.Contains(out, "left by an earlier run of the example") {
		t.Errorf("second run did not remove the first run's dead letter:\n%s", out)
	}
}

// TestInterrupted cancels the run's context in the middle of the story, as
// SIGINT does: run shuts the bus down and returns context.Canceled.
func TestInterrupted(t *testing.T) {
	ctx, cancel := context.WithCancel(bustest.Context(t, 30*time.Second))
	defer cancel()
	w := &cancelAt{cancel: cancel, at: "02 flow"}
	start := time.Now()
	err := run(ctx, config{}, w)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("run = %v, want context.Canceled\n%s", err, w.String())
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("run took %s to stop after the interrupt", d)
	}
}

// cancelAt is a writer that cancels a context once it saw a string.
type cancelAt struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	at     string
	cancel context.CancelFunc
}

func (w *cancelAt) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.at) {
		w.cancel()
	}
	return n, err
}

func (w *cancelAt) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// useEnv sets env plus unique topic prefix, group and dead-letter topic for
// the test, and returns the prefix and the dead-letter topic.
func useEnv(t *testing.T, env map[string]string) (prefix, dlq string) {
	prefix = bustest.Name("example") + "."
	dlq = bustest.Name("example-dlq")
	env["BUSLINE_EXAMPLE_PREFIX"] = prefix
	env["BUSLINE_GROUP"] = bustest.Name("group")
	env["BUSLINE_DEAD_LETTER_TOPIC"] = dlq
	for k, v := range env {
		t.Setenv(k, v)
	}
	return prefix, dlq
}

// runFromEnv runs the story with the configuration main would read.
func runFromEnv(t *testing.T) string {
	t.Helper()
	var logs bytes.Buffer
	cfg, err := configFromEnv(&logs)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := run(bustest.Context(t, 90*time.Second), cfg, &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	return out.String()
}

var (
	stepRE = regexp.MustCompile(`^(\d\d) (\S+) +(.*)$`)
	hopRE  = regexp.MustCompile(`id=(\S+) correlation=(\S+) causation=(\S+)`)
)

// checkStory checks every step of the story in its output.
func checkStory(t *testing.T, out, prefix, dlq string) {
	t.Helper()
	t.Logf("story:\n%s", out)
	steps := map[string][]string{} // tag -> texts, in order
	n := 0
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		m := stepRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		n++
		if got, _ := strconv.Atoi(m[1]); got != n {
			t.Errorf("step number %d, want %d: %q", got, n, line)
		}
		steps[m[2]] = append(steps[m[2]], m[3])
	}
	// expect checks that the texts of tag hold each pattern, in order.
	expect := func(tag string, patterns ...string) {
		t.Helper()
		texts := steps[tag]
		i := 0
		for _, p := range patterns {
			re := regexp.MustCompile(p)
			for i < len(texts) && !re.MatchString(texts[i]) {
				i++
			}
			if i == len(texts) {
				t.Errorf("%s: no line matching %q (after the previous match) in:\n%s", tag, p, strings.Join(texts, "\n"))
				return
			}
			i++
		}
	}

	if !strings.Contains(out, "topics "+prefix+"*") || !strings.Contains(out, "dead letters to "+dlq) {
		t.Errorf("header does not name the topics %s* and %s", prefix, dlq)
	}

	// Correlation and causation over three hops.
	expect(scFlow,
		`^checkout published OrderPlaced o-1001 id=\S+$`,
		`^billing  got OrderPlaced `, `^shipping got PaymentCaptured `, `^tracking got OrderShipped `,
		`^checked: one correlation id across the 3 hops`)
	if f := steps[scFlow]; len(f) == 5 {
		root := strings.TrimPrefix(regexp.MustCompile(`id=\S+$`).FindString(f[0]), "id=")
		parent := "-"
		for i, line := range f[1:4] {
			m := hopRE.FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("hop %d: no ids in %q", i+1, line)
			}
			if m[2] != root || m[3] != parent {
				t.Errorf("hop %d: correlation %s causation %s, want %s and %s", i+1, m[2], m[3], root, parent)
			}
			if i == 0 && m[1] != root {
				t.Errorf("hop 1 handled %s, want the published %s", m[1], root)
			}
			parent = m[1]
		}
	} else {
		t.Errorf("flow: %d lines, want 5", len(f))
	}

	expect(scRetry,
		`^shipping attempt 1 for o-1002: carrier API unavailable \(503\), retrying$`,
		`^shipping attempt 2 for o-1002: carrier API unavailable \(503\), retrying$`,
		`^shipping attempt 3 for o-1002: parcel booked$`)

	expect(scDedup,
		`^checkout published OrderPlaced o-1003 twice with the same event id (\S+)$`,
		`^billing charged o-1003 \(4200 cents\): charge #1 for this order`,
		`^billing skipped the second delivery of \S+ as a duplicate$`,
		`^o-1003: 2 deliveries, 1 charge$`)
	if strings.Contains(out, "charge #2") {
		t.Error("dedup: o-1003 was charged twice")
	}

	expect(scUpcast,
		`^legacy checkout published OrderPlaced v1 \{"id":"o-1004","total":42.5\}$`,
		`^billing got it as v2 \{OrderID:o-1004 AmountCents:4250 Currency:EUR\} \(sent as v1 by /busline-example/legacy-checkout\)$`)

	expect("dead-letter",
		`^checkout published a poison OrderPlaced \S+: \{"order_id":"o-1005","amount_cents":"a lot"\}$`,
		`^read back from `+regexp.QuoteMeta(dlq)+`: reason=decode_failed handler=billing topic=`+regexp.QuoteMeta(prefix)+`orders attempts=1$`,
		`^payload byte-identical: true; left in the dead-letter topic`)

	expect(scEmail,
		`^checkout requested 4 emails; the mailer is limited to 10/s, burst 1$`,
		`^mailer sent email 1/4 `, `^mailer sent email 2/4 `, `^mailer sent email 3/4 `, `^mailer sent email 4/4 `,
		`^4 emails in \S+, [1-4] of them waited for a token$`)
	if c := strings.Count(out, "for a rate token"); c < 1 {
		t.Errorf("throttle: no email waited for a rate token")
	}

	expect(scStock,
		`^checkout requested 3 stock reservations`,
		// RabbitMQ hands out prefetched messages before the requeued one.
		`^warehouse call 1 \(o-100[123]\): warehouse API down, message nacked for redelivery$`,
		`^warehouse call 2 \(o-100[123]\): warehouse API down`,
		`^breaker "warehouse": closed -> open$`,
		`^breaker "warehouse": open -> half-open$`,
		`^warehouse call 3 \(o-100[123]\): stock reserved$`,
		`^breaker "warehouse": half-open -> closed$`,
		`^warehouse call 4 \(o-100[123]\): stock reserved$`,
		`^warehouse call 5 \(o-100[123]\): stock reserved$`,
		`^all 3 reservations done, none dead-lettered$`)

	expect(scReport,
		`^reports started "daily sales"`,
		`^shutdown requested .* while the report is in flight$`,
		`^reports finished "daily sales": acked$`,
		`^bus stopped after the in-flight report finished`)
	if strings.Contains(out, "interrupted") {
		t.Error("shutdown: the report was interrupted")
	}

	expect("telemetry",
		`^o-1001 is one trace [0-9a-f]{32}: (send|publish) orders > process orders > (send|publish) payments > process payments > (send|publish) shipments > process shipments$`,
		`^\d+ spans; metrics: sent=\d+ consumed=\d+ retries=2 dead-lettered=1 dedup-hits=1 throttle-waits=[1-9]\d*$`,
		`^consumed = sent - 1 dead-letter copies \(.*\) \+ 2 redeliveries \(the nacked warehouse calls\)$`)
	if !regexp.MustCompile(`(?m)^done in \S+$`).MatchString(out) {
		t.Error("no final line")
	}
}

// deleteAMQPTopology deletes the queues and exchanges the story declared.
func deleteAMQPTopology(t *testing.T, url, prefix, dlq string) {
	cfg, _ := bus.ConfigFromEnv()
	queues := []string{amqp.QueueName(dlq, bus.DeadLetterGroup)}
	exchanges := []string{amqp.ExchangeName(dlq)}
	for name, topic := range newTopics(prefix).handlerTopics() {
		queues = append(queues, amqp.QueueName(topic, cfg.Group+"."+name))
		exchanges = append(exchanges, amqp.ExchangeName(topic))
	}
	testserver.DeleteAMQP(t, url, queues, exchanges)
}
