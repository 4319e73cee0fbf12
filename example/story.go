package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/handlers"
	"github.com/busline/busline/middleware"
	"github.com/busline/busline/schema"
)

// waitTimeout bounds each step of the story; generous for Kafka, whose
// consumer groups take seconds to join.
const waitTimeout = 60 * time.Second

// Timings of the demo, kept small so that the story takes a few seconds.
const (
	reportDuration     = 500 * time.Millisecond
	breakerOpenTimeout = 300 * time.Millisecond
	emailRate          = 10 // per second
	emailCount         = 4
)

// Scenarios: what the handlers print for a flow. A message whose correlation
// id the story did not start (left over by an earlier, interrupted run on a
// durable broker) is acked without effect or output.
const (
	scFlow   = "flow"
	scRetry  = "retry"
	scDedup  = "dedup"
	scUpcast = "upcast"
	scEmail  = "throttle"
	scStock  = "breaker"
	scReport = "shutdown"
)

// topics are the service's topics, each with the configured prefix.
type topics struct {
	Orders, Payments, Shipments, Emails, Stock, Reports string
}

func newTopics(prefix string) topics {
	return topics{
		Orders:    prefix + "orders",
		Payments:  prefix + "payments",
		Shipments: prefix + "shipments",
		Emails:    prefix + "emails",
		Stock:     prefix + "stock",
		Reports:   prefix + "reports",
	}
}

// handlerTopics lists each handler of the service with the topic it consumes.
func (t topics) handlerTopics() map[string]string {
	return map[string]string{
		"billing":   t.Orders,
		"shipping":  t.Payments,
		"tracking":  t.Shipments,
		"mailer":    t.Emails,
		"warehouse": t.Stock,
		"reports":   t.Reports,
	}
}

// printer numbers the lines of the story. It is safe for concurrent use.
type printer struct {
	mu sync.Mutex
	w  io.Writer
	n  int
}

// step prints one numbered line of the story, tagged with its feature.
func (p *printer) step(tag, format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	fmt.Fprintf(p.w, "%02d %-11s %s\n", p.n, tag, fmt.Sprintf(format, args...))
}

// line prints an unnumbered line.
func (p *printer) line(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format+"\n", args...)
}

// flow is one business flow of the story, known by its correlation id.
type flow struct {
	scenario string
	done     chan struct{}
	once     sync.Once

	mu   sync.Mutex
	hops []schema.Envelope // events handled, in order (scenario flow)
}

func (f *flow) hop(env schema.Envelope) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hops = append(f.hops, env)
}

func (f *flow) finish() { f.once.Do(func() { close(f.done) }) }

// service is the order-processing service of the example: its bus, its
// registries and what the story observes.
type service struct {
	middleware.NopObserver // observes the steps of the handlers that set it

	b      *bus.Bus
	reg    *schema.Registry
	legacy *schema.Registry
	out    *printer
	topics topics
	start  time.Time

	mu         sync.Mutex
	flows      map[string]*flow // by correlation id
	charges    map[string]int   // billing's effects by order id
	duplicates chan string      // ids of duplicates billing skipped
	deadLetter chan middleware.DeadLetterInfo
	waits      map[string]time.Duration // throttle waits by message id
	emailsSent int
	stockCalls int
	report     chan struct{} // closed when the slow report started
}

// startFlow registers the flow of a message about to be published: its
// correlation id is its own id (a flow starts here).
func (s *service) startFlow(msg *message.Message, scenario string) *flow {
	msg.Metadata.Set(schema.KeyCorrelationID, msg.UUID)
	f := &flow{scenario: scenario, done: make(chan struct{})}
	s.mu.Lock()
	s.flows[msg.UUID] = f
	s.mu.Unlock()
	return f
}

// flowOf returns the flow of a correlation id, nil for one of another run.
func (s *service) flowOf(corr string) *flow {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.flows[corr]
}

// handled returns the envelope of the event handled in ctx and its flow.
func (s *service) handled(ctx context.Context) (schema.Envelope, *flow) {
	env, _ := schema.EnvelopeFromContext(ctx)
	return env, s.flowOf(env.CorrelationID)
}

// publish publishes v to topic with ctx's correlation (see handlers.Publish)
// and returns the message, so that the story can print its ids.
func (s *service) publish(ctx context.Context, topic string, v any, opts ...schema.MessageOption) (*message.Message, error) {
	msg, err := s.reg.NewMessage(ctx, v, opts...)
	if err != nil {
		return nil, err
	}
	return msg, s.b.Publish(ctx, topic, msg)
}

func ids(env schema.Envelope) string {
	c := env.CausationID
	if c == "" {
		c = "-"
	}
	return fmt.Sprintf("id=%s correlation=%s causation=%s", env.ID, env.CorrelationID, c)
}

// Duplicate reports the billing handler's dedup hits of the story's flows
// ([middleware.Observer]).
func (s *service) Duplicate(i middleware.DedupInfo) {
	if s.flowOf(i.Message.Metadata.Get(schema.KeyCorrelationID)) != nil && i.State == middleware.AlreadyDone {
		s.duplicates <- i.Message.UUID
	}
}

// DeadLettered reports the billing handler's dead letters.
func (s *service) DeadLettered(i middleware.DeadLetterInfo) {
	select {
	case s.deadLetter <- i:
	default:
	}
}

// Throttled adds up the mailer's throttle waits per message.
func (s *service) Throttled(i middleware.ThrottleInfo) {
	s.mu.Lock()
	s.waits[i.Message.UUID] += i.Waited
	s.mu.Unlock()
}

// BreakerChanged tells the story of the warehouse's breaker.
func (s *service) BreakerChanged(i middleware.BreakerInfo) {
	s.out.step(scStock, "breaker %q: %s -> %s", i.Name, i.From, i.To)
}

// register adds the service's handlers to the bus, each with the policy
// its step of the story shows.
func (s *service) register() error {
	t := s.topics
	regs := []struct {
		name, topic string
		h           bus.HandlerFunc
		opts        []bus.HandlerOption
	}{
		{"billing", t.Orders, handlers.Event(s.reg, s.billing), []bus.HandlerOption{bus.HandlerStack(func(c *middleware.StackConfig) {
			c.Dedup.Observer = s
			c.DeadLetter.Observer = s
		})}},
		{"shipping", t.Payments, handlers.Event(s.reg, s.shipping), []bus.HandlerOption{bus.HandlerStack(func(c *middleware.StackConfig) {
			c.Retry.MaxAttempts = 5
			c.Retry.InitialInterval = 20 * time.Millisecond
			c.Retry.MaxInterval = 100 * time.Millisecond
		})}},
		{"tracking", t.Shipments, handlers.Event(s.reg, s.tracking), nil},
		{"mailer", t.Emails, handlers.Event(s.reg, s.mailer), []bus.HandlerOption{bus.HandlerStack(func(c *middleware.StackConfig) {
			c.Throttle.Rate = emailRate
			c.Throttle.Burst = 1
			c.Throttle.Observer = s
		})}},
		{"warehouse", t.Stock, handlers.Event(s.reg, s.warehouse), []bus.HandlerOption{bus.HandlerStack(func(c *middleware.StackConfig) {
			// The warehouse being down is not the message's fault: no
			// dead-lettering, no retries in process; a failed message is
			// nacked and redelivered, and the breaker counts each failure.
			c.Disable |= middleware.StepDeadLetter
			c.Retry.MaxAttempts = 1
			c.NackDelay = middleware.NackDelayConfig{InitialDelay: 10 * time.Millisecond, MaxDelay: 20 * time.Millisecond}
			c.Breaker.ConsecutiveFailures = 2
			c.Breaker.OpenTimeout = breakerOpenTimeout
			c.Breaker.Observer = s
		})}},
		{"reports", t.Reports, handlers.Event(s.reg, s.reports), nil},
	}
	for _, r := range regs {
		if err := s.b.Handle(r.name, r.topic, r.h, r.opts...); err != nil {
			return err
		}
	}
	return nil
}

// billing charges an order and publishes PaymentCaptured.
func (s *service) billing(ctx context.Context, o OrderPlaced) error {
	env, f := s.handled(ctx)
	if f == nil {
		return nil
	}
	s.mu.Lock()
	s.charges[o.OrderID]++
	n := s.charges[o.OrderID]
	s.mu.Unlock()
	switch f.scenario {
	case scFlow:
		f.hop(env)
		s.out.step(scFlow, "billing  got OrderPlaced     %s", ids(env))
	case scDedup:
		s.out.step(scDedup, "billing charged %s (%d cents): charge #%d for this order, event %s", o.OrderID, o.AmountCents, n, env.ID)
	case scUpcast:
		s.out.step(scUpcast, "billing got it as v2 %+v (sent as v%d by %s)", o, env.DataVersion, env.Source)
	}
	_, err := s.publish(ctx, s.topics.Payments, PaymentCaptured{OrderID: o.OrderID, AmountCents: o.AmountCents}, schema.WithSubject(o.OrderID))
	return err
}

// shipping books a parcel with a flaky carrier and publishes OrderShipped.
func (s *service) shipping(ctx context.Context, p PaymentCaptured) error {
	env, f := s.handled(ctx)
	if f == nil {
		return nil
	}
	attempt := middleware.AttemptFromContext(ctx)
	switch f.scenario {
	case scFlow:
		f.hop(env)
		s.out.step(scFlow, "shipping got PaymentCaptured %s", ids(env))
	case scRetry:
		if attempt < 3 {
			s.out.step(scRetry, "shipping attempt %d for %s: carrier API unavailable (503), retrying", attempt, p.OrderID)
			return errors.New("carrier API: 503 service unavailable")
		}
		s.out.step(scRetry, "shipping attempt %d for %s: parcel booked", attempt, p.OrderID)
	}
	_, err := s.publish(ctx, s.topics.Shipments, OrderShipped{OrderID: p.OrderID, Carrier: "ACME Parcel"}, schema.WithSubject(p.OrderID))
	return err
}

// tracking is the third hop: it records the shipment and ends the flow.
func (s *service) tracking(ctx context.Context, o OrderShipped) error {
	env, f := s.handled(ctx)
	if f == nil {
		return nil
	}
	if f.scenario == scFlow {
		f.hop(env)
		s.out.step(scFlow, "tracking got OrderShipped    %s", ids(env))
	}
	f.finish()
	return nil
}

// mailer sends emails; the mail provider allows emailRate per second.
func (s *service) mailer(ctx context.Context, e EmailRequested) error {
	env, f := s.handled(ctx)
	if f == nil {
		return nil
	}
	s.mu.Lock()
	s.emailsSent++
	n := s.emailsSent
	waited := s.waits[env.ID]
	s.mu.Unlock()
	if waited > 0 {
		s.out.step(scEmail, "mailer sent email %d/%d to %s after waiting %s for a rate token", n, emailCount, e.To, waited.Round(time.Millisecond))
	} else {
		s.out.step(scEmail, "mailer sent email %d/%d to %s at once", n, emailCount, e.To)
	}
	f.finish()
	return nil
}

// warehouse reserves stock; the warehouse API is down for its first two
// calls.
func (s *service) warehouse(ctx context.Context, r StockReservation) error {
	_, f := s.handled(ctx)
	if f == nil {
		return nil
	}
	s.mu.Lock()
	s.stockCalls++
	n := s.stockCalls
	s.mu.Unlock()
	if n <= 2 {
		s.out.step(scStock, "warehouse call %d (%s): warehouse API down, message nacked for redelivery", n, r.OrderID)
		return errors.New("warehouse API: connection refused")
	}
	s.out.step(scStock, "warehouse call %d (%s): stock reserved", n, r.OrderID)
	f.finish()
	return nil
}

// reports builds a slow report; it is in flight when the shutdown starts.
func (s *service) reports(ctx context.Context, r ReportRequested) error {
	_, f := s.handled(ctx)
	if f == nil {
		return nil
	}
	s.out.step(scReport, "reports started %q (takes %s)", r.Name, reportDuration)
	close(s.report)
	select {
	case <-time.After(reportDuration):
	case <-ctx.Done():
		s.out.step(scReport, "reports interrupted %q: %v", r.Name, ctx.Err())
		return ctx.Err()
	}
	s.out.step(scReport, "reports finished %q: acked", r.Name)
	f.finish()
	return nil
}

// wait waits for ch, the end of the run's context, or waitTimeout.
func wait(ctx context.Context, what string, ch <-chan struct{}) error {
	t := time.NewTimer(waitTimeout)
	defer t.Stop()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
	case <-t.C:
		return fmt.Errorf("timed out after %s waiting for %s", waitTimeout, what)
	}
}

// root builds the first message of a flow.
func (s *service) root(reg *schema.Registry, v any, scenario string, opts ...schema.MessageOption) (*message.Message, *flow, error) {
	msg, err := reg.NewMessage(context.Background(), v, opts...)
	if err != nil {
		return nil, nil, err
	}
	return msg, s.startFlow(msg, scenario), nil
}

// stepFlow: one order through three hops; the ids printed show the
// correlation id kept and each causation id pointing at the parent.
func (s *service) stepFlow(ctx context.Context) (string, error) {
	msg, f, err := s.root(s.reg, OrderPlaced{OrderID: "o-1001", AmountCents: 2599, Currency: "EUR"}, scFlow, schema.WithSubject("o-1001"))
	if err != nil {
		return "", err
	}
	s.out.step(scFlow, "checkout published OrderPlaced o-1001 id=%s", msg.UUID)
	if err := s.b.Publish(ctx, s.topics.Orders, msg); err != nil {
		return "", err
	}
	if err := wait(ctx, "order o-1001 to reach tracking", f.done); err != nil {
		return "", err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.hops) != 3 {
		return "", fmt.Errorf("order o-1001 made %d hops, want 3", len(f.hops))
	}
	parent := ""
	for i, env := range f.hops {
		if env.CorrelationID != msg.UUID || env.CausationID != parent {
			return "", fmt.Errorf("hop %d: correlation %s, causation %s; want %s and %q", i+1, env.CorrelationID, env.CausationID, msg.UUID, parent)
		}
		parent = env.ID
	}
	s.out.step(scFlow, "checked: one correlation id across the 3 hops, each causation id = the parent event's id")
	return msg.UUID, nil
}

// stepRetry: the carrier fails twice, the third attempt succeeds.
func (s *service) stepRetry(ctx context.Context) error {
	msg, f, err := s.root(s.reg, OrderPlaced{OrderID: "o-1002", AmountCents: 1000, Currency: "EUR"}, scRetry, schema.WithSubject("o-1002"))
	if err != nil {
		return err
	}
	if err := s.b.Publish(ctx, s.topics.Orders, msg); err != nil {
		return err
	}
	return wait(ctx, "order o-1002 to ship", f.done)
}

// stepDedup: the same event (same id) delivered twice has one effect.
func (s *service) stepDedup(ctx context.Context) error {
	msg, f, err := s.root(s.reg, OrderPlaced{OrderID: "o-1003", AmountCents: 4200, Currency: "EUR"}, scDedup, schema.WithSubject("o-1003"))
	if err != nil {
		return err
	}
	again := msg.Copy()
	s.out.step(scDedup, "checkout published OrderPlaced o-1003 twice with the same event id %s", msg.UUID)
	if err := s.b.Publish(ctx, s.topics.Orders, msg, again); err != nil {
		return err
	}
	if err := wait(ctx, "order o-1003 to ship", f.done); err != nil {
		return err
	}
	t := time.NewTimer(waitTimeout)
	defer t.Stop()
	select {
	case id := <-s.duplicates:
		s.out.step(scDedup, "billing skipped the second delivery of %s as a duplicate", id)
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return errors.New("timed out waiting for the duplicate")
	}
	s.mu.Lock()
	n := s.charges["o-1003"]
	s.mu.Unlock()
	s.out.step(scDedup, "o-1003: 2 deliveries, %d charge", n)
	return nil
}

// stepUpcast: the legacy checkout publishes version 1.
func (s *service) stepUpcast(ctx context.Context) error {
	msg, f, err := s.root(s.legacy, OrderPlacedV1{ID: "o-1004", Total: 42.5}, scUpcast, schema.WithSubject("o-1004"))
	if err != nil {
		return err
	}
	s.out.step(scUpcast, "legacy checkout published OrderPlaced v%s %s", msg.Metadata.Get(schema.KeyDataVersion), msg.Payload)
	if err := s.b.Publish(ctx, s.topics.Orders, msg); err != nil {
		return err
	}
	return wait(ctx, "order o-1004 to ship", f.done)
}

// stepPoison: an undecodable OrderPlaced goes to the dead-letter topic at
// once (schema errors are permanent), and the story reads it back.
func (s *service) stepPoison(ctx context.Context) error {
	msg, _, err := s.root(s.reg, OrderPlaced{OrderID: "o-1005"}, "poison", schema.WithSubject("o-1005"))
	if err != nil {
		return err
	}
	msg.Payload = []byte(`{"order_id":"o-1005","amount_cents":"a lot"}`)
	s.out.step("dead-letter", "checkout published a poison OrderPlaced %s: %s", msg.UUID, msg.Payload)
	if err := s.b.Publish(ctx, s.topics.Orders, msg); err != nil {
		return err
	}
	t := time.NewTimer(waitTimeout)
	defer t.Stop()
	for waiting := true; waiting; {
		select {
		case i := <-s.deadLetter:
			waiting = i.Message.UUID != msg.UUID
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return errors.New("timed out waiting for the poison message to be dead-lettered")
		}
	}
	dl, err := s.readDeadLetter(ctx, msg.UUID)
	if err != nil {
		s.out.step("dead-letter", "could not read it back: %v", err)
		return nil
	}
	md := dl.Metadata
	s.out.step("dead-letter", "read back from %s: reason=%s handler=%s topic=%s attempts=%s",
		s.b.Config().DeadLetterTopic, md.Get(middleware.KeyDLQReason), md.Get(middleware.KeyDLQHandler),
		md.Get(middleware.KeyDLQTopic), md.Get(middleware.KeyDLQAttempts))
	s.out.step("dead-letter", "payload byte-identical: %t; left in the dead-letter topic for the busline CLI", string(dl.Payload) == string(msg.Payload))
	return nil
}

// readDeadLetter reads the dead-letter backlog with Bus.DeadLetters until
// it finds id, and leaves that message there (nack) for the dead-letter
// CLI. Dead letters an earlier run of the example left are acked (removed)
// on the way; one of another service stops the search, since the backlog
// cannot be read past it without consuming it.
func (s *service) readDeadLetter(ctx context.Context, id string) (*message.Message, error) {
	dctx, cancel := context.WithTimeout(ctx, waitTimeout)
	defer cancel()
	ch, err := s.b.DeadLetters(dctx)
	if err != nil {
		return nil, err
	}
	for m := range ch {
		src := m.Metadata.Get(schema.KeySource)
		switch {
		case m.UUID == id:
			cancel() // stop fetching first, so the nack leaves it in the backlog
			m.Nack()
			return m, nil
		case src == exampleSource || src == legacyExampleSource:
			m.Ack()
			s.out.line("   (removed dead letter %s, left by an earlier run of the example)", m.UUID)
		default:
			cancel()
			m.Nack()
			return nil, fmt.Errorf("dead letter %s of %s is ahead of it; inspect the backlog with: go run ./cmd/busline list", m.UUID, src)
		}
	}
	return nil, fmt.Errorf("dead letters ended before %s arrived: %w", id, dctx.Err())
}

// stepThrottle: emails go out at emailRate per second, burst 1.
func (s *service) stepThrottle(ctx context.Context) error {
	var flows []*flow
	var msgs []*message.Message
	for i := range emailCount {
		to := fmt.Sprintf("customer%d@example.com", i+1)
		msg, f, err := s.root(s.reg, EmailRequested{To: to, Subject: "Your order shipped"}, scEmail)
		if err != nil {
			return err
		}
		flows, msgs = append(flows, f), append(msgs, msg)
	}
	s.out.step(scEmail, "checkout requested %d emails; the mailer is limited to %d/s, burst 1", emailCount, emailRate)
	start := time.Now()
	if err := s.b.Publish(ctx, s.topics.Emails, msgs...); err != nil {
		return err
	}
	for _, f := range flows {
		if err := wait(ctx, "emails", f.done); err != nil {
			return err
		}
	}
	s.mu.Lock()
	var waited int
	for _, d := range s.waits {
		if d > 0 {
			waited++
		}
	}
	s.mu.Unlock()
	s.out.step(scEmail, "%d emails in %s, %d of them waited for a token", emailCount, time.Since(start).Round(10*time.Millisecond), waited)
	return nil
}

// stepBreaker: the warehouse fails twice, the breaker opens, pauses
// consumption for breakerOpenTimeout, lets a probe through and closes.
func (s *service) stepBreaker(ctx context.Context) error {
	var flows []*flow
	var msgs []*message.Message
	for _, id := range []string{"o-1001", "o-1002", "o-1003"} {
		msg, f, err := s.root(s.reg, StockReservation{OrderID: id, SKU: "SKU-42"}, scStock)
		if err != nil {
			return err
		}
		flows, msgs = append(flows, f), append(msgs, msg)
	}
	s.out.step(scStock, "checkout requested %d stock reservations; breaker opens after 2 failures, probes after %s", len(msgs), breakerOpenTimeout)
	if err := s.b.Publish(ctx, s.topics.Stock, msgs...); err != nil {
		return err
	}
	for _, f := range flows {
		if err := wait(ctx, "stock reservations", f.done); err != nil {
			return err
		}
	}
	s.out.step(scStock, "all %d reservations done, none dead-lettered", len(msgs))
	return nil
}

// stepReport publishes the slow report and returns once it is in flight.
func (s *service) stepReport(ctx context.Context) (*flow, error) {
	msg, f, err := s.root(s.reg, ReportRequested{Name: "daily sales"}, scReport)
	if err != nil {
		return nil, err
	}
	if err := s.b.Publish(ctx, s.topics.Reports, msg); err != nil {
		return nil, err
	}
	return f, wait(ctx, "the report to start", s.report)
}

// shortBroker names the broker for the story's header.
func shortBroker(cfg bus.Config) string {
	switch cfg.Broker {
	case bus.BrokerKafka:
		return "kafka " + strings.Join(cfg.Kafka.Brokers, ",")
	case bus.BrokerAMQP:
		return "amqp " + redactURL(cfg.AMQP.URL)
	}
	return "memory (in-process)"
}

// redactURL hides the password of an AMQP URL.
func redactURL(u string) string {
	scheme, rest, ok := strings.Cut(u, "://")
	if !ok {
		return u
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return u
	}
	user, _, _ := strings.Cut(rest[:at], ":")
	return scheme + "://" + user + ":***@" + rest[at+1:]
}
