package amqp_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/broker"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/middleware"
	"github.com/busline/busline/schema"
)

// redeliverer is the capability the bus discovers on a broker, with the
// same literal interface type as [amqp.Broker.Redeliverer] returns.
type redeliverer = interface {
	Redeliver(ctx context.Context, msg *message.Message, delay time.Duration) error
}

// The bus finds delayed redelivery by a type assertion with this literal
// type: keep the method's signature in step with it.
var _ interface {
	Redeliverer(topic, group string, delays []time.Duration) (interface {
		Redeliver(ctx context.Context, msg *message.Message, delay time.Duration) error
	}, error)
} = (*amqp.Broker)(nil)

// newRedeliverer returns b's redeliverer of group on topic, and has the
// test delete its wait queues when it ends.
func newRedeliverer(t *testing.T, tp *topology, b *amqp.Broker, topic, group string, delays ...time.Duration) redeliverer {
	t.Helper()
	for _, d := range delays {
		tp.queue(amqp.WaitQueueName(topic, group, d))
	}
	r, err := b.Redeliverer(topic, group, delays)
	if err != nil {
		t.Fatalf("Redeliverer: %v", err)
	}
	return r
}

// retryMessage is a message as the bus would schedule for redelivery:
// an event id other than its UUID, trace context and budget headers.
func retryMessage(payload string) *message.Message {
	m := message.NewMessage(watermill.NewUUID(), []byte(payload))
	m.Metadata = message.Metadata{
		schema.KeyID:                    "evt-" + m.UUID,
		schema.KeyType:                  "com.example.retry",
		"traceparent":                   "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		middleware.KeyRetryAttempts:     "3",
		middleware.KeyRetryFirstFailure: "2026-12-08T01:00:00Z",
	}
	return m
}

// sameMessage fails the test unless got carries want's UUID, payload and
// every metadata entry of want.
func sameMessage(t *testing.T, got, want *message.Message) {
	t.Helper()
	if got.UUID != want.UUID || string(got.Payload) != string(want.Payload) {
		t.Errorf("got message %s %q, want %s %q", got.UUID, got.Payload, want.UUID, want.Payload)
	}
	for k, v := range want.Metadata {
		if got.Metadata[k] != v {
			t.Errorf("metadata %s = %q, want %q", k, got.Metadata[k], v)
		}
	}
}

// A redelivered message reaches its group's subscriber no earlier than its
// delay after Redeliver was called, and no later than the delay plus 1s
// after RabbitMQ confirmed it into the wait queue; UUID, payload and
// metadata are those sent.
func TestDelayedRetryTiming(t *testing.T) {
	t.Parallel()
	for _, delay := range []time.Duration{time.Second, 10 * time.Second} {
		t.Run(delay.String(), func(t *testing.T) {
			t.Parallel()
			tp := newTopology(t)
			b := newBroker(t, amqp.Config{})
			ctx := bustest.Context(t, delay+2*wait)
			topic, group := tp.topic("delay"), tp.group("g")
			// Both delays declared: each has its own wait queue, so the
			// short one never waits behind the long one.
			r := newRedeliverer(t, tp, b, topic, group, time.Second, 10*time.Second)
			_, msgs := subscribe(t, ctx, b, group, topic)

			sent := retryMessage("timing")
			start := time.Now()
			if err := r.Redeliver(ctx, sent, delay); err != nil {
				t.Fatalf("Redeliver: %v", err)
			}
			confirmed := time.Now()
			got := receiveWithin(t, msgs, delay+wait)
			arrived := time.Now()
			got.Ack()

			// RabbitMQ counts the TTL from when the message entered the
			// wait queue (after start, before the confirm), in whole
			// milliseconds.
			if early := arrived.Sub(start); early < delay-time.Millisecond {
				t.Errorf("arrived %v after Redeliver was called, before the delay %v", early, delay)
			}
			if late := arrived.Sub(confirmed); late > delay+time.Second {
				t.Errorf("arrived %v after the confirm, later than the delay %v plus 1s", late, delay)
			}
			t.Logf("delay %v: arrived %v after the call, %v after the confirm", delay, arrived.Sub(start), arrived.Sub(confirmed))
			sameMessage(t, got, sent)
			if rk := got.Metadata[amqp.KeyRoutingKey]; rk != amqp.QueueName(topic, group) {
				t.Errorf("routing key %q, want the group's queue %q", rk, amqp.QueueName(topic, group))
			}
		})
	}
}

// A message redelivered for group A comes back to A's queue only: group B,
// bound to the same topic, never sees it. B's queue would have received it
// when it left the wait queue, before A got it and before the marker
// published afterwards, so B's first message being the marker proves it.
func TestDelayedRetryOnlyItsOwnQueue(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	b := newBroker(t, amqp.Config{})
	ctx := bustest.Context(t, 2*wait)
	topic, ga, gb := tp.topic("own"), tp.group("a"), tp.group("b")
	r := newRedeliverer(t, tp, b, topic, ga, time.Second)
	if err := b.Prepare(ctx, topic, gb); err != nil {
		t.Fatal(err)
	}
	_, msgsA := subscribe(t, ctx, b, ga, topic)
	_, msgsB := subscribe(t, ctx, b, gb, topic)

	sent := retryMessage("only a")
	if err := r.Redeliver(ctx, sent, time.Second); err != nil {
		t.Fatalf("Redeliver: %v", err)
	}
	got := receive(t, msgsA)
	got.Ack()
	sameMessage(t, got, sent)

	marker := message.NewMessage(watermill.NewUUID(), []byte("marker"))
	if err := b.Publisher().Publish(topic, marker); err != nil {
		t.Fatal(err)
	}
	if m := receive(t, msgsB); m.UUID != marker.UUID {
		t.Fatalf("group b got %s (%q) before the marker: the redelivery for group a reached it", m.UUID, m.Payload)
	} else {
		m.Ack()
	}
	if m := receive(t, msgsA); m.UUID != marker.UUID {
		t.Fatalf("group a got %s, want the marker", m.UUID)
	} else {
		m.Ack()
	}
}

// Redeliverer refuses delays RabbitMQ cannot express and a classic bounded
// queue (which would drop messages coming back to it when full), and
// Redeliver refuses a delay that was not declared.
func TestDelayedRetryRejectsBadDelays(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	b := newBroker(t, amqp.Config{})
	topic, group := tp.topic("bad"), tp.group("g")
	_, err := b.Redeliverer(topic, group, []time.Duration{0, 1500 * time.Microsecond, time.Second, time.Second})
	for _, want := range []string{"delay 0s", "delay 1.5ms", "given twice"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Redeliverer: %v, want it to mention %q", err, want)
		}
	}
	if _, err := b.Redeliverer(topic, group, nil); err == nil {
		t.Error("Redeliverer accepted no delays")
	}
	bounded := newBroker(t, amqp.Config{MaxQueueLength: 10})
	if _, err := bounded.Redeliverer(topic, group, []time.Duration{time.Second}); err == nil || !strings.Contains(err.Error(), "quorum") {
		t.Errorf("Redeliverer on classic queues with MaxQueueLength: %v, want a refusal naming quorum", err)
	}

	r := newRedeliverer(t, tp, b, topic, group, time.Second)
	if err := r.Redeliver(context.Background(), retryMessage("x"), 2*time.Second); err == nil || !strings.Contains(err.Error(), "not one of the delays") {
		t.Errorf("Redeliver with an undeclared delay: %v", err)
	}
}

// A classic queue bounded by MaxQueueLength N with nobody consuming
// accepts N messages; each of the next k Publish calls fails with
// ErrNacked for its message, the queue holds exactly the N accepted ones
// (in order), and the broker counts k rejected publishes.
//
// A quorum queue's bound is soft (RabbitMQ 3.10.8 tells the channel only
// after the queue went over it): published one by one it accepts N+1
// here, and a pipelined batch overshoots further. What holds for both: the
// rejected publishes are exactly the ones Publish failed with ErrNacked,
// the queue holds exactly the accepted ones, and the counter agrees.
func TestDelayedRetryBoundedQueue(t *testing.T) {
	t.Parallel()
	for _, qt := range []string{amqp.QueueTypeClassic, amqp.QueueTypeQuorum} {
		t.Run(qt, func(t *testing.T) {
			t.Parallel()
			const n, k = 5, 3
			tp := newTopology(t)
			b := newBroker(t, amqp.Config{QueueType: qt, MaxQueueLength: n})
			ctx := bustest.Context(t, 2*wait)
			topic, group := tp.topic("bounded"), tp.group("g")
			if err := b.Prepare(ctx, topic, group); err != nil {
				t.Fatal(err)
			}
			var accepted []string
			nacked := 0
			for i := range n + k {
				m := message.NewMessage(watermill.NewUUID(), fmt.Appendf(nil, "%d", i))
				err := b.Publisher().Publish(topic, m)
				var perr *broker.PublishError
				switch {
				case err == nil:
					if nacked > 0 {
						t.Fatalf("publish %d accepted after %d were rejected: the queue did not stay full", i, nacked)
					}
					accepted = append(accepted, m.UUID)
				case errors.Is(err, amqp.ErrNacked) && errors.As(err, &perr) && len(perr.Failed) == 1 && errors.Is(perr.Failed[0].Err, amqp.ErrNacked):
					nacked++
				default:
					t.Fatalf("publish %d: %v, want nil or ErrNacked", i, err)
				}
			}
			wantAccepted := n
			if qt == amqp.QueueTypeQuorum {
				wantAccepted = n + 1
			}
			if len(accepted) != wantAccepted || nacked != n+k-wantAccepted {
				t.Fatalf("%d accepted, %d nacked of %d; want %d and %d", len(accepted), nacked, n+k, wantAccepted, n+k-wantAccepted)
			}
			if got := b.RejectedPublishes(); got != int64(nacked) {
				t.Errorf("RejectedPublishes %d, want %d", got, nacked)
			}
			if got := depth(t, b, topic, group); got != len(accepted) {
				t.Errorf("queue depth %d, want the %d accepted", got, len(accepted))
			}
			_, msgs := subscribe(t, ctx, b, group, topic)
			for i, id := range accepted {
				m := receive(t, msgs)
				m.Ack()
				if m.UUID != id {
					t.Fatalf("message %d: %s, want accepted %s", i, m.UUID, id)
				}
			}
		})
	}
}

// checkQuorum fails the test unless the existing queue q is a quorum
// queue with exactly the arguments args (x-queue-type aside). A passive
// declare does not show a queue's type or arguments, but an active one
// refuses different ones with PRECONDITION_FAILED: q redeclared with args
// and x-queue-type quorum must pass, and with x-queue-type classic must
// fail naming the current type (3.10.8: "received 'classic' but current
// is 'quorum'").
func checkQuorum(t *testing.T, q string, args amqp091.Table) {
	t.Helper()
	with := func(qt string) error {
		a := amqp091.Table{"x-queue-type": qt}
		for k, v := range args {
			a[k] = v
		}
		_, err := rawChannel(t).QueueDeclare(q, true, false, false, false, a)
		return err
	}
	if err := with(amqp.QueueTypeQuorum); err != nil {
		t.Errorf("queue %s redeclared as quorum with %v: %v", q, args, err)
	}
	var aerr *amqp091.Error
	if err := with(amqp.QueueTypeClassic); !errors.As(err, &aerr) || aerr.Code != amqp091.PreconditionFailed || !strings.Contains(aerr.Reason, "current is 'quorum'") {
		t.Errorf("queue %s redeclared as classic: %v, want PRECONDITION_FAILED naming current type quorum", q, err)
	}
}

// With QueueType quorum, the group's queue and its wait queues are quorum
// queues, and a delayed message comes back through them.
func TestDelayedRetryQuorum(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	b := newBroker(t, amqp.Config{QueueType: amqp.QueueTypeQuorum})
	ctx := bustest.Context(t, 2*wait)
	topic, group := tp.topic("quorum"), tp.group("g")
	r := newRedeliverer(t, tp, b, topic, group, time.Second, 10*time.Second)
	checkQuorum(t, amqp.QueueName(topic, group), nil)
	for _, d := range []time.Duration{time.Second, 10 * time.Second} {
		checkQuorum(t, amqp.WaitQueueName(topic, group, d), amqp091.Table{
			"x-message-ttl":             d.Milliseconds(),
			"x-dead-letter-exchange":    "",
			"x-dead-letter-routing-key": amqp.QueueName(topic, group),
			"x-dead-letter-strategy":    "at-least-once",
			"x-overflow":                "reject-publish",
		})
	}
	_, msgs := subscribe(t, ctx, b, group, topic)
	sent := retryMessage("quorum")
	start := time.Now()
	if err := r.Redeliver(ctx, sent, time.Second); err != nil {
		t.Fatalf("Redeliver: %v", err)
	}
	got := receive(t, msgs)
	got.Ack()
	if early := time.Since(start); early < time.Second-time.Millisecond {
		t.Errorf("arrived %v after Redeliver was called, before the delay 1s", early)
	}
	sameMessage(t, got, sent)
}

// A queue cannot change type in place: preparing a classic group's queue
// as quorum fails with ErrQueueMismatch, naming the queue and the way out.
func TestDelayedRetryQueueTypeChangeFails(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := bustest.Context(t, wait)
	topic, group := tp.topic("change"), tp.group("g")
	if err := newBroker(t, amqp.Config{}).Prepare(ctx, topic, group); err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []amqp.Config{{QueueType: amqp.QueueTypeQuorum}, {MaxQueueLength: 7}} {
		err := newBroker(t, cfg).Prepare(ctx, topic, group)
		if !errors.Is(err, amqp.ErrQueueMismatch) {
			t.Fatalf("Prepare with %+v over a classic unbounded queue: %v, want ErrQueueMismatch", cfg, err)
		}
		for _, want := range []string{amqp.QueueName(topic, group), "delete_queue", "BUSLINE_AMQP_QUEUE_TYPE", "inequivalent arg"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not mention %q", err, want)
			}
		}
	}
}

// rabbitmqctl runs rabbitmqctl with args, failing the test on an error.
func rabbitmqctl(t *testing.T, ctx context.Context, args ...string) {
	t.Helper()
	out, err := exec.CommandContext(ctx, "rabbitmqctl", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("rabbitmqctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// Messages waiting in a durable classic wait queue survive a restart of
// RabbitMQ's app (rabbitmqctl stop_app, start_app) and all come back
// after their delay: none is lost. The broker reconnects and its
// subscription resumes on its own.
//
// It stops RabbitMQ for every test using it, so it runs only when
// BUSLINE_TEST_RABBITMQ_RESTART=1 (.ci/run runs it alone, after the other
// tests).
func TestDelayedRetryBrokerRestart(t *testing.T) {
	if os.Getenv("BUSLINE_TEST_RABBITMQ_RESTART") != "1" {
		t.Skip("restarts RabbitMQ (rabbitmqctl stop_app/start_app), which breaks every other test using it: set BUSLINE_TEST_RABBITMQ_RESTART=1 and run it alone, as .ci/run does")
	}
	const delay, n = 10 * time.Second, 20
	tp := newTopology(t)
	b := newBroker(t, amqp.Config{})
	ctx := bustest.Context(t, 3*time.Minute)
	topic, group := tp.topic("restart"), tp.group("g")
	r := newRedeliverer(t, tp, b, topic, group, delay)
	_, msgs := subscribe(t, ctx, b, group, topic)

	want := map[string]bool{}
	start := time.Now()
	for i := range n {
		m := retryMessage(fmt.Sprint(i))
		want[m.UUID] = true
		if err := r.Redeliver(ctx, m, delay); err != nil {
			t.Fatalf("Redeliver %d: %v", i, err)
		}
	}
	stopped := false
	t.Cleanup(func() {
		if stopped {
			rabbitmqctl(t, context.Background(), "start_app")
		}
	})
	rabbitmqctl(t, ctx, "stop_app")
	stopped = true
	if waited := time.Since(start); waited >= delay {
		t.Fatalf("stop_app returned %v after the messages were sent: their wait of %v was over before the restart", waited, delay)
	}
	rabbitmqctl(t, ctx, "start_app")
	stopped = false
	rabbitmqctl(t, ctx, "await_startup")
	t.Logf("RabbitMQ app restarted %v after the messages were sent", time.Since(start))

	got := map[string]int{}
	for len(got) < n {
		select {
		case m, ok := <-msgs:
			if !ok {
				t.Fatal("messages channel closed")
			}
			if early := time.Since(start); early < delay-time.Millisecond {
				t.Errorf("message %s arrived %v after it was sent, before its delay %v", m.UUID, early, delay)
			}
			if !want[m.UUID] {
				t.Errorf("unexpected message %s", m.UUID)
			}
			got[m.UUID]++
			m.Ack()
		case <-ctx.Done():
			t.Fatalf("%d of %d messages came back after the restart", len(got), n)
		}
	}
	for id, c := range got {
		if c != 1 {
			t.Errorf("message %s came back %d times", id, c)
		}
	}
}

// Redeliver survives what Publish survives: while the connection is down
// it fails with ErrNotConnected or ErrChannelClosed, and after the
// reconnect it declares its queues again (here the wait queue was deleted
// meanwhile) and goes through. A wait queue deleted under a live
// connection fails one call with ErrUnroutable, never silently, and the
// next call declares it again.
func TestDelayedRetryAfterReconnect(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	b, px := proxiedBroker(t, amqp.Config{})
	ctx := bustest.Context(t, 3*wait)
	topic, group := tp.topic("redeliver-reconnect"), tp.group("g")
	const delay = 100 * time.Millisecond
	r := newRedeliverer(t, tp, b, topic, group, delay)
	_, msgs := subscribe(t, ctx, b, group, topic)
	wq := amqp.WaitQueueName(topic, group, delay)
	deleteWaitQueue := func() {
		t.Helper()
		if _, err := rawChannel(t).QueueDelete(wq, false, false, false); err != nil {
			t.Fatal(err)
		}
	}

	deleteWaitQueue()
	px.cut()
	sent := retryMessage("after reconnect")
	eventually(t, "a Redeliver after the cut to go through", func() (bool, string) {
		err := r.Redeliver(ctx, sent, delay)
		if err == nil {
			return true, ""
		}
		if !errors.Is(err, amqp.ErrNotConnected) && !errors.Is(err, amqp.ErrChannelClosed) {
			t.Fatalf("Redeliver while reconnecting: %v, want ErrNotConnected or ErrChannelClosed", err)
		}
		return false, err.Error()
	})
	got := receive(t, msgs)
	got.Ack()
	sameMessage(t, got, sent)

	deleteWaitQueue()
	if err := r.Redeliver(ctx, retryMessage("lost"), delay); !errors.Is(err, amqp.ErrUnroutable) {
		t.Fatalf("Redeliver to a deleted wait queue: %v, want ErrUnroutable", err)
	}
	again := retryMessage("declared again")
	if err := r.Redeliver(ctx, again, delay); err != nil {
		t.Fatalf("Redeliver after ErrUnroutable: %v", err)
	}
	got = receive(t, msgs)
	got.Ack()
	sameMessage(t, got, again)
}

// A message goes through several rounds: the message received back from a
// wait queue (with the x-death headers RabbitMQ added, as string metadata)
// is redelivered again, through the same and another delay, and comes
// back each time with its UUID, payload and metadata. RabbitMQ (3.10.8)
// replaces the string x-death with a new table each round (count 1), so
// the round count lives in the bus's own headers, not in x-death.
func TestDelayedRetryRounds(t *testing.T) {
	t.Parallel()
	for _, qt := range []string{amqp.QueueTypeClassic, amqp.QueueTypeQuorum} {
		t.Run(qt, func(t *testing.T) {
			t.Parallel()
			tp := newTopology(t)
			b := newBroker(t, amqp.Config{QueueType: qt})
			ctx := bustest.Context(t, 3*wait)
			topic, group := tp.topic("rounds"), tp.group("g")
			const d1, d2 = 50 * time.Millisecond, 100 * time.Millisecond
			r := newRedeliverer(t, tp, b, topic, group, d1, d2)
			_, msgs := subscribe(t, ctx, b, group, topic)

			sent := retryMessage("rounds")
			m := sent
			for i, d := range []time.Duration{d1, d1, d2} {
				if err := r.Redeliver(ctx, m, d); err != nil {
					t.Fatalf("round %d: Redeliver: %v", i+1, err)
				}
				m = receive(t, msgs)
				m.Ack()
				sameMessage(t, m, sent)
				if q := amqp.WaitQueueName(topic, group, d); !strings.Contains(m.Metadata["x-death"], q) {
					t.Errorf("round %d: x-death %s does not name the wait queue %s", i+1, m.Metadata["x-death"], q)
				}
			}
		})
	}
}
