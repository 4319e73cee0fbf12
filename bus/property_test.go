package bus_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/bus/memory"
	"github.com/busline/busline/internal/testserver"
	"github.com/busline/busline/middleware"
)

// The property tests publish thousands of messages through a bus with the
// default middleware stack, on each broker, following a seeded random plan
// of transient failures, panics, duplicate deliveries and poison messages,
// and check the delivery contract:
//
//   - every good message had exactly one effect, duplicates included;
//   - every poison message (permanent error, or retries exhausted) is in the
//     dead-letter topic once per published copy, payload byte-identical,
//     with its reason, topic, handler and attempt count, and had no effect;
//   - nothing else reaches the dead-letter topic, nothing is lost.
//
// The seed is logged; BUSLINE_PROPERTY_SEED replays a run, and
// BUSLINE_PROPERTY_MESSAGES changes the number of distinct messages.

const (
	propMessages    = 5000 // distinct messages per run (duplicates come on top)
	propMaxAttempts = 4    // the retry budget the plan is made for
	propHandler     = "prop"
)

func TestPropertyMemory(t *testing.T) {
	t.Parallel()
	runProperty(t, bus.Config{
		Broker: bus.BrokerMemory,
		Memory: memory.Config{},
	}, propRun{publishers: 2, batch: 100})
}

func TestPropertyKafka(t *testing.T) {
	t.Parallel()
	runProperty(t, propKafkaConfig(t), propKafkaRun)
}

var propKafkaRun = propRun{publishers: 8, batch: 50}

func propKafkaConfig(t *testing.T) bus.Config {
	const partitions = 8
	return bus.Config{
		Broker: bus.BrokerKafka,
		Kafka: kafka.Config{
			Brokers:    testserver.Kafka(t, partitions),
			Partitions: partitions,
		},
	}
}

func TestPropertyAMQP(t *testing.T) {
	t.Parallel()
	runProperty(t, propAMQPConfig(t), propAMQPRun(t, nil))
}

// TestDelayedRetryPropertyAMQP is TestDelayedRetryPropertyMemory on
// RabbitMQ: the delayed rounds go through TTL wait queues.
func TestDelayedRetryPropertyAMQP(t *testing.T) {
	t.Parallel()
	runProperty(t, propAMQPConfig(t), propAMQPRun(t, propDelays))
}

// TestDelayedRetryPropertyKafka is TestDelayedRetryPropertyMemory on
// Kafka: the delayed rounds go through retry topics.
func TestDelayedRetryPropertyKafka(t *testing.T) {
	t.Parallel()
	run := propKafkaRun
	run.delays = propDelays
	runProperty(t, propKafkaConfig(t), run)
}

func propAMQPConfig(t *testing.T) bus.Config {
	return bus.Config{
		Broker: bus.BrokerAMQP,
		AMQP:   amqp.Config{URL: testserver.AMQPURL(t)},
	}
}

func propAMQPRun(t *testing.T, delays []time.Duration) propRun {
	return propRun{publishers: 8, batch: 50, delays: delays, cleanup: func(t *testing.T, c bus.Config, topic string) {
		group := c.Group + "." + propHandler
		queues := []string{amqp.QueueName(topic, group), amqp.QueueName(c.DeadLetterTopic, bus.DeadLetterGroup)}
		for _, d := range delays {
			queues = append(queues, amqp.WaitQueueName(topic, group, d))
		}
		testserver.DeleteAMQP(t, c.AMQP.URL, queues, []string{amqp.ExchangeName(topic), amqp.ExchangeName(c.DeadLetterTopic)})
	}}
}

// TestDelayedRetryPropertyMemory is TestPropertyMemory with a delayed tier
// of two rounds: random failure schedules over the whole budget (12
// attempts in three rounds) end handled once or dead-lettered once with the
// totals of every round.
func TestDelayedRetryPropertyMemory(t *testing.T) {
	t.Parallel()
	runProperty(t, bus.Config{Broker: bus.BrokerMemory}, propRun{publishers: 2, batch: 100, delays: propDelays})
}

// propDelays is the delayed tier of the TestDelayedRetryProperty runs.
var propDelays = []time.Duration{5 * time.Millisecond, 20 * time.Millisecond}

// propRun tunes a property run to its broker.
type propRun struct {
	publishers int // goroutines publishing at once
	batch      int // messages per Publish call
	// cleanup, when set, removes what the run created on the broker; it
	// runs after the bus closed.
	cleanup func(t *testing.T, cfg bus.Config, topic string)
	// delays are the delayed redelivery tier's; none: off, and a message
	// has propMaxAttempts attempts in all.
	delays []time.Duration
}

// budget is the number of attempts a message gets in all: propMaxAttempts
// in process per round, a round per delay plus the first.
func (r propRun) budget() int { return propMaxAttempts * (len(r.delays) + 1) }

// propKind is what the handler does with a message.
type propKind int

const (
	propGood      propKind = iota // succeeds at once
	propTransient                 // fails (error or panic) its first k attempts, then succeeds
	propPermanent                 // fails k transient attempts, then returns a permanent error
	propExhaust                   // fails every attempt: retries run out
)

var propKindNames = [...]string{"good", "transient", "permanent", "exhaust"}

func (k propKind) String() string { return propKindNames[k] }

// propPlan is the fate of one message id.
type propPlan struct {
	id      string
	payload []byte
	kind    propKind
	fail    int    // attempts 1..fail fail transiently (counted over every round)
	panics  uint32 // bit a-1 set: attempt a panics instead of returning an error
	copies  int    // how many times it is published (2: a duplicate delivery)
	budget  int    // attempts in all (propRun.budget)
}

func (p *propPlan) poison() bool { return p.kind == propPermanent || p.kind == propExhaust }

// wantReason and wantAttempts are the dead-letter metadata of a poison message.
func (p *propPlan) wantReason() string {
	if p.kind == propPermanent {
		return middleware.ReasonPermanent
	}
	if p.panics&(1<<(p.budget-1)) != 0 {
		return middleware.ReasonPanic
	}
	return middleware.ReasonRetriesExhausted
}

func (p *propPlan) wantAttempts() int {
	if p.kind == propPermanent {
		return p.fail + 1
	}
	return p.budget
}

// wantRounds is the number of rounds a poison message went through: the
// round of its last attempt.
func (p *propPlan) wantRounds() int { return (p.wantAttempts()-1)/propMaxAttempts + 1 }

func (p *propPlan) String() string {
	return fmt.Sprintf("%s{%s fail=%d panics=%04b copies=%d}", p.id, p.kind, p.fail, p.panics, p.copies)
}

// newPropPlans draws the plan of n messages from rng.
func newPropPlans(rng *rand.Rand, prefix string, n, budget int) []*propPlan {
	plans := make([]*propPlan, n)
	for i := range plans {
		p := &propPlan{id: fmt.Sprintf("%s-%05d", prefix, i), copies: 1, budget: budget}
		p.payload = make([]byte, 1+rng.IntN(96))
		for j := range p.payload {
			p.payload[j] = byte(rng.Uint32()) // binary, NULs and invalid UTF-8 included
		}
		switch r := rng.IntN(100); {
		case r < 62:
			p.kind = propGood
		case r < 84:
			p.kind = propTransient
			p.fail = 1 + rng.IntN(budget-1)
		case r < 94:
			p.kind = propPermanent
			if rng.IntN(3) == 0 {
				p.fail = 1 + rng.IntN(budget-1)
			}
		default:
			p.kind = propExhaust
			p.fail = budget
		}
		if p.fail > 0 {
			p.panics = uint32(rng.IntN(1 << budget))
		}
		if rng.IntN(10) == 0 {
			p.copies = 2
		}
		plans[i] = p
	}
	return plans
}

// propState records what happened to every message.
type propState struct {
	middleware.NopObserver

	plans map[string]*propPlan

	mu          sync.Mutex
	effects     map[string]int // successful handlings
	deadLetters map[string]int // dead letters read from the topic
	hooked      map[string]int // Observer.DeadLettered calls
	dupHits     map[string]int // Observer.Duplicate AlreadyDone
	inProgress  int            // Observer.Duplicate InProgress
	problems    []string

	pending atomic.Int64 // expected events not seen yet
	done    chan struct{}
	once    sync.Once
}

func newPropState(plans []*propPlan) *propState {
	s := &propState{
		plans:       make(map[string]*propPlan, len(plans)),
		effects:     map[string]int{},
		deadLetters: map[string]int{},
		hooked:      map[string]int{},
		dupHits:     map[string]int{},
		done:        make(chan struct{}),
	}
	var want int64
	for _, p := range plans {
		s.plans[p.id] = p
		// Each copy of a poison message is dead-lettered; a good message
		// has one effect, and each further copy is a dedup hit.
		want += int64(p.copies)
	}
	s.pending.Store(want)
	return s
}

func (s *propState) problem(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.problems) < 50 {
		s.problems = append(s.problems, fmt.Sprintf(format, args...))
	}
}

// seen counts one expected event.
func (s *propState) seen() {
	if s.pending.Add(-1) == 0 {
		s.once.Do(func() { close(s.done) })
	}
}

// handle is the handler: it follows the message's plan.
func (s *propState) handle(ctx context.Context, m *message.Message) error {
	p := s.plans[m.UUID]
	if p == nil {
		s.problem("handled unknown message %q", m.UUID)
		return nil
	}
	if !bytes.Equal(m.Payload, p.payload) {
		s.problem("%v: handled payload %x, published %x", p, m.Payload, p.payload)
	}
	// The attempt over every round: the earlier rounds' count travels in
	// the message's budget headers.
	attempt := middleware.RetryBudgetOf(m.Metadata).Attempts + middleware.AttemptFromContext(ctx)
	if attempt <= p.fail {
		if p.panics&(1<<(attempt-1)) != 0 {
			panic(fmt.Sprintf("planned panic, attempt %d", attempt))
		}
		return fmt.Errorf("planned transient failure, attempt %d", attempt)
	}
	if p.kind == propPermanent {
		return bus.Permanent(fmt.Errorf("planned poison, attempt %d", attempt))
	}
	if p.kind == propExhaust {
		s.problem("%v: attempt %d ran, retries should have run out", p, attempt)
		return errors.New("unplanned attempt")
	}
	s.mu.Lock()
	s.effects[m.UUID]++
	n := s.effects[m.UUID]
	s.mu.Unlock()
	if p.poison() {
		s.problem("%v: poison message had an effect", p)
	} else if n == 1 {
		s.seen()
	} else {
		s.problem("%v: effect number %d", p, n)
	}
	return nil
}

// duplicate records a message dedup did not process.
// DeadLettered counts the dead letters the stack reports.
func (s *propState) DeadLettered(i middleware.DeadLetterInfo) {
	s.mu.Lock()
	s.hooked[i.Message.UUID]++
	s.mu.Unlock()
}

// Duplicate checks a dedup hit against the plan.
func (s *propState) Duplicate(i middleware.DedupInfo) {
	s.mu.Lock()
	if i.State != middleware.AlreadyDone {
		s.inProgress++ // nacked, comes back later
		s.mu.Unlock()
		return
	}
	s.dupHits[i.Message.UUID]++
	n := s.dupHits[i.Message.UUID]
	s.mu.Unlock()
	p := s.plans[i.Message.UUID]
	switch {
	case p == nil:
		s.problem("dedup hit for unknown message %q", i.Message.UUID)
	case p.poison():
		s.problem("%v: poison message committed as done (dedup hit)", p)
	case n < p.copies:
		s.seen()
	}
	// Further hits are redeliveries of a message already handled: skipping
	// them is dedup's job, not a failure.
}

// deadLetter checks one message read from the dead-letter topic.
func (s *propState) deadLetter(m *message.Message, topic string) {
	defer m.Ack()
	p := s.plans[m.UUID]
	if p == nil {
		s.problem("unknown dead letter %q %v", m.UUID, m.Metadata)
		return
	}
	s.mu.Lock()
	s.deadLetters[m.UUID]++
	n := s.deadLetters[m.UUID]
	s.mu.Unlock()
	if !p.poison() {
		s.problem("%v: good message dead-lettered: %v", p, m.Metadata)
		return
	}
	if n > p.copies {
		s.problem("%v: dead letter number %d", p, n)
		return
	}
	if !bytes.Equal(m.Payload, p.payload) {
		s.problem("%v: dead letter payload %x, published %x", p, m.Payload, p.payload)
	}
	for key, want := range map[string]string{
		middleware.KeyDLQReason:   p.wantReason(),
		middleware.KeyDLQTopic:    topic,
		middleware.KeyDLQHandler:  propHandler,
		middleware.KeyDLQAttempts: strconv.Itoa(p.wantAttempts()),
		middleware.KeyDLQRounds:   strconv.Itoa(p.wantRounds()),
	} {
		if got := m.Metadata.Get(key); got != want {
			s.problem("%v: dead letter %s = %q, want %q", p, key, got, want)
		}
	}
	for _, key := range []string{middleware.KeyDLQError, middleware.KeyDLQFirstFailure, middleware.KeyDLQLastFailure} {
		if m.Metadata.Get(key) == "" {
			s.problem("%v: dead letter without %s", p, key)
		}
	}
	s.seen()
}

func (s *propState) problemText() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.problems, "\n\t")
}

// missing describes the expected events not seen, for a timeout.
func (s *propState) missing() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, p := range s.plans {
		if p.poison() && s.deadLetters[p.id] < p.copies || !p.poison() && (s.effects[p.id] == 0 || s.dupHits[p.id] < p.copies-1) {
			out = append(out, fmt.Sprintf("%v (effects %d, dedup hits %d, dead letters read %d, published %d)",
				p, s.effects[p.id], s.dupHits[p.id], s.deadLetters[p.id], s.hooked[p.id]))
		}
	}
	slices.Sort(out)
	if len(out) > 20 {
		out = append(out[:20], fmt.Sprintf("... and %d more", len(out)-20))
	}
	return strings.Join(out, "\n\t")
}

func runProperty(t *testing.T, cfg bus.Config, run propRun) {
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("BUSLINE_PROPERTY_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("BUSLINE_PROPERTY_SEED: %v", err)
		}
	}
	n := propMessages
	if v := os.Getenv("BUSLINE_PROPERTY_MESSAGES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			t.Fatalf("BUSLINE_PROPERTY_MESSAGES: %v", err)
		}
	}
	t.Logf("seed %d (replay with BUSLINE_PROPERTY_SEED=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))

	topic := bustest.Name("prop")
	cfg.Group = bustest.Name("prop-group")
	cfg.DeadLetterTopic = bustest.Name("prop-dlq")
	cfg.ShutdownTimeout = 20 * time.Second
	if run.delays == nil {
		cfg.RedeliveryDelays = bus.NoRedelivery
	} else {
		cfg.RedeliveryDelays = run.delays
	}
	plans := newPropPlans(rng, topic, n, run.budget())
	s := newPropState(plans)

	logs := &propLog{}
	b, err := bus.New(cfg,
		bus.WithLogger(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))),
		// The default stack, with its waits shortened so that the run is
		// quick: every step stays on.
		bus.WithStack(func(c *middleware.StackConfig) {
			c.Retry = middleware.RetryConfig{
				MaxAttempts:     propMaxAttempts,
				InitialInterval: time.Millisecond,
				MaxInterval:     5 * time.Millisecond,
			}
			c.NackDelay = middleware.NackDelayConfig{InitialDelay: time.Millisecond, MaxDelay: 10 * time.Millisecond}
			c.Breaker.OpenTimeout = 10 * time.Millisecond
		}))
	if err != nil {
		t.Fatal(err)
	}
	if run.cleanup != nil {
		t.Cleanup(func() { run.cleanup(t, cfg, topic) })
	}
	closed := false
	closeBus := func() {
		if closed {
			return
		}
		closed = true
		ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout+10*time.Second)
		defer cancel()
		if err := b.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
	t.Cleanup(closeBus)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("bus log (warnings and errors, last lines):\n%s", logs)
		}
	})

	err = b.Handle(propHandler, topic, s.handle, bus.HandlerStack(func(c *middleware.StackConfig) {
		// Observe the steps; the bus's telemetry is told too.
		c.Observer = s
	}))
	if err != nil {
		t.Fatal(err)
	}

	ctx := bustest.Context(t, 3*time.Minute)
	start := time.Now()
	dls, err := b.DeadLetters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var readers sync.WaitGroup
	readers.Go(func() {
		for m := range dls {
			s.deadLetter(m, topic)
		}
	})
	runCtx, stopRun := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- b.Run(runCtx) }()
	defer stopRun()
	select {
	case <-b.Running():
	case err := <-runErr:
		t.Fatalf("Run: %v", err)
	case <-ctx.Done():
		t.Fatal("bus did not start")
	}

	// Every copy, shuffled. Half the duplicates come right after their
	// original (in the same batch: on Kafka, unkeyed messages go to random
	// partitions, so the two copies are often handled concurrently), the
	// other half anywhere later or earlier.
	order := slices.Clone(plans)
	rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	var copies, scattered []*propPlan
	for _, p := range order {
		copies = append(copies, p)
		if p.copies > 1 {
			if rng.IntN(2) == 0 {
				copies = append(copies, p)
			} else {
				scattered = append(scattered, p)
			}
		}
	}
	for _, p := range scattered {
		copies = slices.Insert(copies, rng.IntN(len(copies)+1), p)
	}
	var pubErr atomic.Value
	var pubs sync.WaitGroup
	per := (len(copies) + run.publishers - 1) / run.publishers
	for part := range slices.Chunk(copies, per) {
		pubs.Go(func() {
			for batch := range slices.Chunk(part, run.batch) {
				msgs := make([]*message.Message, len(batch))
				for i, p := range batch {
					msgs[i] = message.NewMessage(p.id, slices.Clone(p.payload))
				}
				if err := b.Publish(ctx, topic, msgs...); err != nil {
					pubErr.CompareAndSwap(nil, err)
					return
				}
			}
		})
	}
	pubs.Wait()
	published := time.Since(start)
	if err, _ := pubErr.Load().(error); err != nil {
		t.Fatalf("Publish: %v", err)
	}

	select {
	case <-s.done:
	case <-ctx.Done():
		t.Fatalf("seed %d: timed out with %d expected events missing:\n\t%s\nproblems so far:\n\t%s",
			seed, s.pending.Load(), s.missing(), s.problemText())
	case err := <-runErr:
		t.Fatalf("Run ended early: %v", err)
	}
	handled := time.Since(start)

	// Drain and close: whatever was still running finishes, so that the
	// counts below are final.
	stopRun()
	if err := <-runErr; err != nil {
		t.Errorf("Run: %v", err)
	}
	closeBus()
	readers.Wait()

	s.mu.Lock()
	defer s.mu.Unlock()
	var good, poison, dups, hits, dlCopies int
	for _, p := range plans {
		if p.copies > 1 {
			dups++
		}
		if p.poison() {
			poison++
			dlCopies += p.copies
			if s.effects[p.id] != 0 {
				s.problems = append(s.problems, fmt.Sprintf("%v: %d effects", p, s.effects[p.id]))
			}
			if s.deadLetters[p.id] != p.copies || s.hooked[p.id] != p.copies {
				s.problems = append(s.problems, fmt.Sprintf("%v: dead-lettered %d times, %d read, want %d",
					p, s.hooked[p.id], s.deadLetters[p.id], p.copies))
			}
			continue
		}
		good++
		if s.effects[p.id] != 1 {
			s.problems = append(s.problems, fmt.Sprintf("%v: %d effects, want 1", p, s.effects[p.id]))
		}
		if s.hooked[p.id] != 0 || s.deadLetters[p.id] != 0 {
			s.problems = append(s.problems, fmt.Sprintf("%v: good message dead-lettered", p))
		}
		if s.dupHits[p.id] < p.copies-1 {
			s.problems = append(s.problems, fmt.Sprintf("%v: %d dedup hits, want %d", p, s.dupHits[p.id], p.copies-1))
		}
		hits += s.dupHits[p.id]
	}
	t.Logf("%d messages (%d good, %d poison, %d duplicated) in %v (published in %v): %d dead letters, %d dedup hits, %d concurrent duplicates nacked",
		len(copies), good, poison, dups, handled.Round(time.Millisecond), published.Round(time.Millisecond),
		dlCopies, hits, s.inProgress)
	if len(s.problems) > 0 {
		t.Errorf("seed %d: %d problems:\n\t%s", seed, len(s.problems), strings.Join(s.problems, "\n\t"))
	}
}

// propLog keeps the last lines the bus logged, for a failing test.
type propLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *propLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lines) >= 100 {
		l.lines = l.lines[1:]
	}
	l.lines = append(l.lines, string(p))
	return len(p), nil
}

func (l *propLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "")
}
