package kafka

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/busline/busline/bus/broker"
	"github.com/busline/busline/internal/delivery"
)

// subscriber is a consumer group's subscriber: each Subscribe call joins the
// group as a member of its own, on a franz-go client of its own.
type subscriber struct {
	b     *Broker
	group string
	cfg   consumerConfig

	mu         sync.Mutex
	closed     bool
	consumers  []member
	subscribed int // Subscribe calls that succeeded
}

// consumerConfig is what a consumer needs of the broker's Config and the
// broker.SubscriberOptions, defaults applied.
type consumerConfig struct {
	ordering         string
	batch            int
	maxInFlight      int64
	maxPerPartition  int
	commitInterval   time.Duration
	rebalanceTimeout time.Duration
	transactions     bool
	retryDelays      []time.Duration
}

func (s *subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, broker.ErrClosed
	}
	if s.cfg.transactions {
		c, err := s.b.newTxnConsumer(ctx, s.group, topic, s.cfg, s.subscribed)
		if err != nil {
			return nil, err
		}
		s.consumers = append(s.consumers, c)
		s.subscribed++
		return c.out, nil
	}
	tctx, cancel := context.WithTimeout(ctx, connectTimeout)
	tiers, err := s.b.retryTiers(tctx, topic, s.group, s.cfg.retryDelays)
	cancel()
	if err != nil {
		return nil, err
	}
	id, release := s.b.instanceID(s.group)
	c, err := s.b.newConsumer(ctx, s.group, topic, s.cfg, id, tiers)
	if err != nil {
		release()
		return nil, err
	}
	c.closed = func() {
		release()
		s.forget(c)
	}
	s.consumers = append(s.consumers, c)
	s.subscribed++
	return c.out, nil
}

// SubscribeInitialize creates topic unless it exists (the conformance
// suite's and Watermill's hook for subscribers that need one).
func (s *subscriber) SubscribeInitialize(topic string) error {
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	return s.b.Prepare(ctx, topic, s.group)
}

// Close closes every subscription: each commits what its handler finished,
// leaves the group and closes its channel. Messages in flight and not yet
// acked are delivered again later. It is idempotent.
func (s *subscriber) Close() error {
	s.mu.Lock()
	s.closed = true
	cs := s.consumers
	s.consumers = nil
	s.mu.Unlock()
	for _, c := range cs {
		c.close()
	}
	s.b.forget(s)
	return nil
}

// forget removes a closed subscription (closed by its Subscribe context,
// or by Close) from the subscriber's list.
func (s *subscriber) forget(c member) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.consumers = slices.DeleteFunc(s.consumers, func(x member) bool { return x == c })
}

// stats returns the subscriptions' stats.
func (s *subscriber) stats() []ConsumerStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ConsumerStats, 0, len(s.consumers))
	for _, c := range s.consumers {
		out = append(out, c.stats())
	}
	return out
}

// ConsumerStats describes one subscription at one moment: the
// broker-neutral [broker.ConsumerStats], which the telemetry reads.
type ConsumerStats = broker.ConsumerStats

// consumer is one subscription: a group member consuming one topic, and
// the retry topics of its handler (broker.SubscriberOptions.RetryDelays,
// and the existing tiers of earlier delays: retryTiers).
//
// A poll loop fetches records (franz-go's PollRecords with
// BlockRebalanceOnPoll, so no rebalance runs between a poll and the
// dispatch of its records) and queues them on lanes: one per partition
// ("partition" ordering), per partition and key ("key"), or per record
// ("unordered"). Each lane is a goroutine that hands its records to the
// router one at a time (or one batch at a time) and waits for the ack, so
// the router's per-message goroutine never sees two records of one lane at
// once. A lane ends when its queue is empty.
//
// Per partition, a tracker keeps the fetched records in offset order with a
// done flag; the commit mark is one past the last record of the done prefix
// ("the lowest offset still in flight"). A committer marks and commits the
// marks every commitInterval; revoke and close do too.
//
// A partition of a retry topic holds back its records from the first one
// not yet due (held, tracked, not on a lane, not counted in flight) and is
// paused meanwhile; dueLoop puts them on their lanes when they are due and
// resumes the partition once it holds none.
type consumer struct {
	b      *Broker
	group  string
	topic  string
	retry  map[string]time.Duration // the retry topics consumed too, and their delays; nil without
	cfg    consumerConfig
	cl     *kgo.Client
	logger watermill.LoggerAdapter
	out    chan *message.Message
	// msgCtx is the parent of every message's context: the Subscribe
	// context.
	msgCtx context.Context

	pollCtx   context.Context // ends the poll loop
	stopPoll  context.CancelFunc
	done      chan struct{} // closed by close: lanes give up
	closeOnce sync.Once
	loops     sync.WaitGroup // poll loop, committer
	lanes     sync.WaitGroup
	total     atomic.Int64 // records fetched and not finished
	room      chan struct{}
	idle      chan laneTask // lane goroutines that ran out of work take lanes here
	lost      atomic.Int64
	assigned  atomic.Int64 // partitions assigned
	closing   atomic.Bool
	wake      chan struct{} // tells dueLoop that records were held

	mu           sync.Mutex
	parts        map[topicPartition]*partition
	fetchStopped bool    // stopFetching was called: take no new records
	startBuf     []*lane // dispatch's lanes to start, reused (the poll loop's only)
	// closed, when set, runs at the end of close: it frees the static
	// member id and drops the consumer from its subscriber's list.
	closed func()
}

// topicPartition names a partition of a topic a consumer consumes.
type topicPartition struct {
	topic string
	id    int32
}

// partition is the state of one assigned partition.
type partition struct {
	id    int32
	topic string
	// delay is the delay of p's retry topic, whose records wait until
	// due; zero for the handler's topic.
	delay time.Duration

	mu      sync.Mutex
	stopped bool          // revoked, lost or closed: hand out nothing more
	stop    chan struct{} // closed when stopped
	final   bool          // the last mark was taken: mark nothing more
	lanes   map[string]*lane
	free    []*lane // lanes that ran empty, for reuse
	trk     tracker
	pending int  // records fetched and not finished
	paused  bool // by pauseSlow
	// held are the records of a retry topic's partition from the first
	// one not yet due on, in offset order: tracked, but on no lane and
	// not in pending; delayed says the partition is paused for them.
	// The client pauses a partition while paused or delayed.
	held    []item
	delayed bool
	// released is how many of pending no longer count against
	// maxInFlight (see pauseSlow); the next ones to finish are these.
	released int
	// maxOut is the highest offset handed to the router, -1 if none;
	// atomic, so that a send records itself without the partition lock,
	// which every lane of a partition contends for in "key" ordering.
	maxOut atomic.Int64
	// draining: revoked, the partition finishes the records up to cutoff
	// (its maxOut then) and hands out no later one; settled is closed
	// once every record up to cutoff finished.
	draining bool
	cutoff   int64
	settled  chan struct{}
	drainc   chan struct{} // closed when draining starts
}

// lane is a queue of records that must run one after the other.
type lane struct {
	key string
	q   []item
	// buf is an array q started in, kept when the lane is reused (in
	// "key" ordering lanes come and go with every few records).
	buf []item
}

// newLane returns a lane of key holding it, reusing a lane that ran empty
// and its array. p.mu must be held.
func (p *partition) newLane(key string, it item) *lane {
	if n := len(p.free); n > 0 {
		l := p.free[n-1]
		p.free = p.free[:n-1]
		l.key, l.q = key, append(l.buf[:0], it)
		l.buf = l.q
		return l
	}
	q := make([]item, 1, 2)
	q[0] = it
	return &lane{key: key, q: q, buf: q}
}

// freeLane keeps l, which ran empty and left p.lanes, for reuse, with the
// small array its queue started in. There are never more free lanes than
// lanes that ran at once, which the in-flight bound caps. p.mu must be held.
func (p *partition) freeLane(l *lane) {
	l.key, l.q = "", nil
	clear(l.buf[:cap(l.buf)]) // it may still hold fetched records
	p.free = append(p.free, l)
}

// item is a fetched record and its position in its partition's tracker.
type item struct {
	rec *kgo.Record
	seq int64
}

// newConsumer starts a group member consuming topic and its retry topics.
func (b *Broker) newConsumer(ctx context.Context, group, topic string, cfg consumerConfig, instanceID string, retry map[string]time.Duration) (*consumer, error) {
	c := &consumer{
		b:      b,
		group:  group,
		topic:  topic,
		cfg:    cfg,
		logger: b.logger.With(watermill.LogFields{"consumer_group": group, "topic": topic}),
		out:    make(chan *message.Message),
		msgCtx: ctx,
		done:   make(chan struct{}),
		room:   make(chan struct{}, 1),
		idle:   make(chan laneTask),
		parts:  make(map[topicPartition]*partition),
	}
	topics := []string{topic}
	if len(retry) > 0 {
		c.retry = retry
		for rt := range retry {
			topics = append(topics, rt)
		}
		c.wake = make(chan struct{}, 1)
	}
	opts, err := b.cfg.kgoOptions()
	if err != nil {
		return nil, err
	}
	opts = append(opts, b.groupOptions(group, topics, cfg)...)
	opts = append(opts,
		kgo.BlockRebalanceOnPoll(),
		kgo.AutoCommitMarks(),
		// The consumer commits its marks every commitInterval itself
		// (commitLoop); franz-go's own autocommit of marks, which
		// AutoCommitMarks turns on, is only a backstop.
		kgo.AutoCommitInterval(10*cfg.commitInterval),
		kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, a map[string][]int32) {
			c.assigned.Add(int64(countPartitions(a)))
		}),
		kgo.OnPartitionsRevoked(c.onRevoked),
		kgo.OnPartitionsLost(c.onLost),
	)
	if instanceID != "" {
		opts = append(opts, kgo.InstanceID(instanceID))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka: consumer: %w", err)
	}
	c.cl = cl
	c.pollCtx, c.stopPoll = context.WithCancel(context.Background())
	c.loops.Add(3)
	go c.pollLoop()
	go c.commitLoop()
	if c.retry != nil {
		c.loops.Add(1)
		go c.dueLoop()
	}
	go func() {
		defer c.loops.Done()
		select {
		case <-ctx.Done():
			// The subscriber's contract: the channel closes when the
			// Subscribe context ends. close waits for this goroutine,
			// so run it apart.
			go c.close()
		case <-c.done:
		}
	}()
	return c, nil
}

// groupOptions are the franz-go options of a member of group consuming
// topics, a consumer's or a transactional one's: where a new group starts,
// cooperative-sticky assignment, the rebalance and session timeouts, and
// read_committed fetches. Records of transactions become visible once
// committed, and those of aborted ones never (what transactional handlers,
// transact.go, publish); without transactional producers on the topic this
// costs nothing, the last stable offset being the end.
func (b *Broker) groupOptions(group string, topics []string, cfg consumerConfig) []kgo.Opt {
	reset := kgo.NewOffset().AtStart()
	if b.cfg.InitialOffset == "newest" {
		reset = kgo.NewOffset().AtEnd()
	}
	return []kgo.Opt{
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topics...),
		kgo.ConsumeResetOffset(reset),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.RebalanceTimeout(cfg.rebalanceTimeout),
		kgo.SessionTimeout(b.cfg.SessionTimeout),
		kgo.HeartbeatInterval(min(b.cfg.SessionTimeout/3, 3*time.Second)),
		kgo.FetchMaxWait(fetchMaxWait),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
	}
}

// pollLoop polls while there is room, dispatches what each poll returned
// and allows rebalances in between.
func (c *consumer) pollLoop() {
	defer c.loops.Done()
	check := time.NewTimer(stuckAfter)
	defer check.Stop()
	for {
		select {
		case <-check.C:
			c.pauseSlow(time.Now())
			check.Reset(stuckAfter)
		default:
		}
		// Poll when a quarter of the bound is free (or nothing is in
		// flight): polls of a few records each would cost more than
		// the records.
		total := c.total.Load()
		room := c.cfg.maxInFlight - total
		if room < max(c.cfg.maxInFlight/4, 1) && total > 0 {
			select {
			case <-c.room:
			case <-check.C:
				c.pauseSlow(time.Now())
				check.Reset(stuckAfter)
			case <-c.pollCtx.Done():
				return
			}
			continue
		}
		fs := c.cl.PollRecords(c.pollCtx, int(min(room, int64(c.cfg.maxPerPartition))))
		if fs.IsClientClosed() || c.pollCtx.Err() != nil {
			c.cl.AllowRebalance()
			return
		}
		now := time.Now()
		fs.EachError(func(topic string, p int32, err error) {
			if errors.Is(err, context.Canceled) {
				return
			}
			c.logger.Error("kafka: fetch", err, watermill.LogFields{"partition": p})
		})
		fs.EachPartition(func(ftp kgo.FetchTopicPartition) {
			if len(ftp.Records) > 0 {
				c.dispatch(ftp.Topic, ftp.Partition, ftp.Records, now)
			}
		})
		c.cl.AllowRebalance()
		if err := fs.Err(); fs.NumRecords() == 0 && err != nil && !errors.Is(err, context.Canceled) {
			// A fetch error (say, the broker is down) comes back at
			// once from the next poll too: do not spin.
			select {
			case <-time.After(reconnectRetrySleep):
			case <-c.pollCtx.Done():
				return
			}
		}
	}
}

// fetchMaxWait is how long the broker holds a fetch that finds no new
// data. A resumed partition waits for the fetch in flight, so it is
// shorter than Kafka's 500ms default.
const fetchMaxWait = 100 * time.Millisecond

// reconnectRetrySleep is how long the poll loop waits after a poll that
// returned only errors.
const reconnectRetrySleep = time.Second

// dispatch queues the records of one poll of partition id of topic on their
// lanes, starting the lanes that were idle. In a retry topic's partition,
// the records from the first one not yet due on are held instead, and the
// partition is paused until dueLoop has put them on their lanes. It runs
// between a poll and AllowRebalance, so never concurrently with a revoke.
func (c *consumer) dispatch(topic string, id int32, recs []*kgo.Record, now time.Time) {
	c.mu.Lock()
	if c.fetchStopped {
		c.mu.Unlock()
		return // never tracked, so never committed: fetched again later
	}
	p := c.parts[topicPartition{topic, id}]
	if p == nil {
		p = &partition{id: id, topic: topic, delay: c.retry[topic], stop: make(chan struct{}),
			settled: make(chan struct{}), drainc: make(chan struct{}), lanes: map[string]*lane{}}
		p.maxOut.Store(-1)
		c.parts[topicPartition{topic, id}] = p
	}
	c.mu.Unlock()

	p.mu.Lock()
	ready := recs
	if p.delay > 0 {
		ready = recs[:p.due(recs, now)]
	}
	start := c.startBuf[:0]
	for _, rec := range ready {
		start = c.enqueue(p, item{rec: rec, seq: p.trk.add(rec, now)}, start)
	}
	p.pending += len(ready)
	c.total.Add(int64(len(ready)))
	if len(ready) < len(recs) {
		c.hold(p, recs[len(ready):], now)
	}
	p.mu.Unlock()
	// Started after the lock is let go: a lane goroutine woken while
	// dispatch held it would only wait for it.
	for i, l := range start {
		c.startLane(p, l)
		start[i] = nil
	}
	c.startBuf = start
}

// enqueue puts it on its lane (one per partition, per key, or per record,
// see Config.Ordering) and returns start with the lane appended when the
// lane is new and must be started. p.mu must be held.
func (c *consumer) enqueue(p *partition, it item, start []*lane) []*lane {
	var key []byte // the lane: one per partition, or per key
	switch c.cfg.ordering {
	case broker.OrderUnordered:
		return append(start, p.newLane("", it))
	case broker.OrderKey:
		key = it.rec.Key
	}
	if l := p.lanes[string(key)]; l != nil { // no allocation for the lookup
		l.q = append(l.q, it)
		return start
	}
	l := p.newLane(string(key), it)
	p.lanes[l.key] = l
	return append(start, l)
}

// due returns how many records at the start of recs, of p's retry topic,
// are due at now: up to the first one not yet due, and none when p holds
// records already. The records of a partition are handed out in offset
// order, which is the order of their due times, every record of a retry
// topic having the same delay: waiting at the head is waiting for the
// earliest. p.mu must be held.
func (p *partition) due(recs []*kgo.Record, now time.Time) int {
	i := 0
	if len(p.held) == 0 {
		for i < len(recs) && !retryDue(recs[i], p.delay).After(now) {
			i++
		}
	}
	return i
}

// hold holds recs, of p's retry topic, the first not yet due (see due),
// until dueLoop finds them due. While p holds records it is paused: it
// fetches no more (what the client fetched ahead for it is dropped and
// fetched again after the resume), so a partition holds at most what one
// or two polls returned for it. Held records are tracked from their due time on, so
// that neither the oldest-in-flight age nor pauseSlow counts the wait.
// p.mu must be held.
func (c *consumer) hold(p *partition, recs []*kgo.Record, now time.Time) {
	for _, rec := range recs {
		at := now
		if due := retryDue(rec, p.delay); due.After(now) {
			at = due
		}
		p.held = append(p.held, item{rec: rec, seq: p.trk.add(rec, at)})
	}
	if !p.delayed {
		p.delayed = true
		if !p.paused {
			// Paused under p.mu, as dueLoop and finish resume under it.
			c.cl.PauseFetchPartitions(map[string][]int32{p.topic: {p.id}})
		}
	}
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// dueLoop puts held records on their lanes when they are due (see hold),
// until the consumer closes.
func (c *consumer) dueLoop() {
	defer c.loops.Done()
	t := time.NewTimer(time.Hour)
	t.Stop()
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-c.wake:
		case <-c.done:
			return
		}
		if next, ok := c.releaseDue(time.Now()); ok {
			t.Reset(time.Until(next))
		}
	}
}

// releaseDue puts the held records due at now on their lanes, resumes the
// partitions that hold none any more, and returns the due time of the
// earliest record still held, if any.
func (c *consumer) releaseDue(now time.Time) (next time.Time, ok bool) {
	for _, p := range c.snapshot() {
		if p.delay == 0 {
			continue
		}
		var start []*lane
		p.mu.Lock()
		if p.stopped || len(p.held) == 0 {
			p.mu.Unlock()
			continue
		}
		n := 0
		for n < len(p.held) && !retryDue(p.held[n].rec, p.delay).After(now) {
			start = c.enqueue(p, p.held[n], start)
			n++
		}
		p.held = p.held[n:]
		p.pending += n
		c.total.Add(int64(n))
		if len(p.held) == 0 {
			p.held = nil
			p.delayed = false
			if !p.paused {
				c.cl.ResumeFetchPartitions(map[string][]int32{p.topic: {p.id}})
			}
		} else if due := retryDue(p.held[0].rec, p.delay); !ok || due.Before(next) {
			next, ok = due, true
		}
		p.mu.Unlock()
		for _, l := range start {
			c.startLane(p, l)
		}
	}
	return next, ok
}

// stuckAfter is how long a partition's oldest record must have been
// waiting before the partition counts as slow (see pauseSlow).
const stuckAfter = 500 * time.Millisecond

// pauseSlow pauses every partition that holds more than maxPerPartition
// records, the oldest of them fetched stuckAfter ago or earlier (a stuck
// record or key, a nack loop, a slow handler), when other partitions are
// assigned; its records beyond maxPerPartition stop counting against
// maxInFlight, so that the other partitions get room. A paused partition
// fetches nothing until it holds half of maxPerPartition. A partition that
// merely runs ahead is never paused: a pause drops what the client fetched
// ahead for it, which is then fetched again.
func (c *consumer) pauseSlow(now time.Time) {
	if c.assigned.Load() < 2 {
		return
	}
	parts := c.snapshot()
	for _, p := range parts {
		p.mu.Lock()
		at, ok := p.trk.oldest()
		if p.stopped || p.paused || p.pending <= c.cfg.maxPerPartition || !ok || now.Sub(at) < stuckAfter {
			p.mu.Unlock()
			continue
		}
		p.paused = true
		// Paused under p.mu, as finish resumes under it: a resume may
		// not overtake the pause and leave it in place for good.
		if !p.delayed {
			c.cl.PauseFetchPartitions(map[string][]int32{p.topic: {p.id}})
		}
		release := p.pending - c.cfg.maxPerPartition - p.released
		p.released += release
		p.mu.Unlock()
		c.total.Add(-int64(release))
		select {
		case c.room <- struct{}{}:
		default:
		}
	}
}

// startLane runs l on an idle lane goroutine, or on a new one when none is
// idle. A lane goroutine that ran out of work waits for the next lane until
// the consumer closes: in "key" ordering lanes come and go with every few
// records, and starting a goroutine for each cost a fifth of the time.
func (c *consumer) startLane(p *partition, l *lane) {
	t := laneTask{p, l}
	select {
	case c.idle <- t:
	default:
		c.lanes.Add(1)
		go c.laneWorker(t)
	}
}

type laneTask struct {
	p *partition
	l *lane
}

func (c *consumer) laneWorker(t laneTask) {
	defer c.lanes.Done()
	for {
		c.runLane(t.p, t.l)
		select {
		case t = <-c.idle:
		case <-c.done:
			return
		}
	}
}

// runLane hands out the lane's records until its queue is empty or the
// partition stops.
func (c *consumer) runLane(p *partition, l *lane) {
	for {
		p.mu.Lock()
		if p.stopped {
			p.mu.Unlock()
			return
		}
		if len(l.q) == 0 {
			if p.lanes[l.key] == l {
				delete(p.lanes, l.key)
			}
			p.freeLane(l)
			p.mu.Unlock()
			return
		}
		n := 1
		if c.cfg.batch > 1 {
			n = min(len(l.q), c.cfg.batch)
		}
		if n = p.upToCutoff(l.q[:n]); n == 0 {
			p.mu.Unlock()
			return
		}
		group := l.q[:n:n]
		l.q = l.q[n:]
		p.mu.Unlock()
		if !c.process(p, group) {
			p.giveBack(l, group)
			return
		}
	}
}

// giveBack gives back the records of group not finished and those left on
// lane l, when p drains at shutdown and one of them was nacked (or could not
// be handed out): they are not handed out again, the drain does not wait for
// them, and p's commit stops before the first of them, so that the group's
// next consumer handles them, in order (and, again, what other lanes
// finished after them). Handing a nacked record out again would loop on it
// until the drain's deadline: the stack skips its nack delay at shutdown.
func (p *partition) giveBack(l *lane, group []item) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.draining || p.stopped || p.final {
		return
	}
	for _, it := range group {
		p.trk.giveBack(it.seq)
	}
	for _, it := range l.q {
		p.trk.giveBack(it.seq)
	}
	l.q = l.q[len(l.q):]
	if p.lanes[l.key] == l {
		delete(p.lanes, l.key)
	}
	if p.trk.settled(p.cutoff) {
		closeOnce(p.settled)
	}
}

// process hands out group (one record, or one batch) until every record
// was acked. A batch goes out as one carrier message; when it fails, its
// records go out one by one, each through the handler's retries and dead
// letter on its own. It returns false when the partition stopped or the
// consumer closed.
func (c *consumer) process(p *partition, group []item) bool {
	if len(group) > 1 {
		switch c.processCarried(p, group) {
		case carriedAcked:
			return true
		case carriedStopped:
			return false
		}
		for _, it := range group {
			if !c.processOne(p, it) {
				return false
			}
		}
		return true
	}
	return c.processOne(p, group[0])
}

// Outcomes of processCarried.
const (
	carriedAcked = iota
	carriedNacked
	carriedStopped
)

// processCarried hands group out as one carrier message whose context
// holds the records' messages (internal/delivery), for a batch handler: the
// router and the middleware run once per batch instead of once per record.
// The carrier's id is "kafka:<topic>/<partition>/<first>-<last>", stable
// across redeliveries of the same records. Its ack finishes every record.
func (c *consumer) processCarried(p *partition, group []item) int {
	if group = p.handOut(group); len(group) == 0 {
		return carriedStopped
	}

	msgs := make([]*message.Message, len(group))
	for i, it := range group {
		msgs[i] = unmarshalRecord(it.rec)
	}
	first, last := group[0].rec, group[len(group)-1].rec
	carrier := message.NewMessage("kafka:"+first.Topic+"/"+strconv.Itoa(int(first.Partition))+"/"+
		strconv.FormatInt(first.Offset, 10)+"-"+strconv.FormatInt(last.Offset, 10), nil)
	ctx, cancel := context.WithCancel(c.msgCtx)
	defer cancel()
	batch := delivery.Carry(msgs)
	carrier.SetContext(&recordContext{
		Context: ctx,
		info: RecordInfo{Topic: first.Topic, Partition: first.Partition,
			Offset: first.Offset, Timestamp: first.Timestamp},
		member: delivery.Member{Batch: batch},
	})
	if !c.send(p, first.Offset, last.Offset, carrier) {
		return carriedStopped
	}
	select {
	case <-carrier.Acked():
	case <-carrier.Nacked():
		return carriedNacked
	case <-c.done:
		select {
		case <-carrier.Acked():
		default:
			return carriedStopped
		}
	}
	if !batch.Taken() {
		// Acked by a handler that did not take the batch (a plain
		// handler registered with batch delivery): nothing says its
		// records were handled, so they go one by one.
		return carriedNacked
	}
	for _, it := range group {
		c.finish(p, it)
	}
	return carriedAcked
}

// processOne hands out one record until it was acked, again at once after
// each nack (the stack waited before it nacked). In batch mode it is a record split from a
// failed batch: its message says so (internal/delivery), so that the batch
// handler handles it alone, at once. It returns false when the partition
// stopped or the consumer closed.
func (c *consumer) processOne(p *partition, it item) bool {
	msg := unmarshalRecord(it.rec)
	for round := 0; ; round++ {
		// runLane took the record under the lock, within the cutoff;
		// after a nack the partition may have stopped or begun to drain
		// meanwhile.
		if round > 0 && len(p.handOut([]item{it})) == 0 {
			return false
		}
		// A message's context ends when it was acked or nacked
		// (Watermill's subscriber contract).
		ctx, cancel := context.WithCancel(c.msgCtx)
		rc := &recordContext{
			Context: ctx,
			info: RecordInfo{Topic: it.rec.Topic, Partition: it.rec.Partition,
				Offset: it.rec.Offset, Timestamp: it.rec.Timestamp},
		}
		if c.cfg.batch > 1 {
			rc.member = delivery.Member{Batch: delivery.Alone}
		}
		msg.SetContext(rc)
		if !c.send(p, it.rec.Offset, it.rec.Offset, msg) {
			cancel()
			return false
		}
		// Wait for it also when the partition stopped meanwhile: a revoke
		// waits for it, and commits it if acked.
		select {
		case <-msg.Acked():
			cancel()
			c.finish(p, it)
			return true
		case <-msg.Nacked():
			cancel()
		case <-c.done:
			// Closing: an ack that came in meanwhile still counts.
			select {
			case <-msg.Acked():
				c.finish(p, it)
			default:
			}
			cancel()
			return false
		}
		// Nacked: hand it out again at once (the stack waited before it
		// nacked), unless the partition stopped or the consumer closes,
		// or the consumer is shutting down and the partition drains: then
		// it is given back (see giveBack). On a revoke it is handed out
		// again (the nack delay still applies), so that it may still
		// finish before the partition goes.
		select {
		case <-p.stop:
			return false
		case <-c.done:
			return false
		case <-p.drainc:
			if c.pollCtx.Err() != nil { // stopFetching or close
				return false
			}
		default:
		}
		msg = msg.Copy() // a message is acked or nacked once
	}
}

// finish records that it was handled (or safely dead-lettered).
func (c *consumer) finish(p *partition, it item) {
	p.mu.Lock()
	if !p.final {
		p.trk.done(it.seq)
		if p.draining && p.trk.settled(p.cutoff) {
			closeOnce(p.settled)
		}
	}
	if p.stopped {
		// Its accounting left with the partition.
		p.mu.Unlock()
		return
	}
	p.pending--
	if p.paused && p.pending <= c.cfg.maxPerPartition/2 {
		p.paused = false
		if !p.delayed { // else dueLoop resumes it
			c.cl.ResumeFetchPartitions(map[string][]int32{p.topic: {p.id}})
		}
	}
	if p.released > 0 {
		// Its count left with the release.
		p.released--
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	if n := c.total.Add(-1); n == 0 || n == c.cfg.maxInFlight-max(c.cfg.maxInFlight/4, 1) {
		select {
		case c.room <- struct{}{}:
		default:
		}
	}
}

// commitLoop marks and commits the finished prefix of every partition every
// commitInterval.
func (c *consumer) commitLoop() {
	defer c.loops.Done()
	t := time.NewTicker(c.cfg.commitInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-c.done:
			return
		}
		parts := c.snapshot()
		if c.mark(parts, false) {
			ctx, cancel := context.WithTimeout(context.Background(), c.cfg.commitInterval*5)
			if err := c.cl.CommitMarkedOffsets(ctx); err != nil && !c.closing.Load() {
				c.logger.Error("kafka: commit", err, nil)
			}
			cancel()
		}
	}
}

// mark marks the commit offsets of parts with the client and reports
// whether any moved. With final, each partition's mark is its last.
func (c *consumer) mark(parts []*partition, final bool) bool {
	moved := false
	for _, p := range parts {
		p.mu.Lock()
		if !p.final {
			// Marked under p.mu: no mark of a partition can land after
			// its last one (final), or after it was lost.
			if eo, ok := p.trk.mark(); ok {
				c.cl.MarkCommitOffsets(map[string]map[int32]kgo.EpochOffset{p.topic: {p.id: eo}})
				moved = true
			}
			if final {
				p.final = true
			}
		}
		p.mu.Unlock()
	}
	return moved
}

// upToCutoff returns how many records at the start of group may still be
// handed out: all of them, or while p drains (revoked, or the consumer
// stopping) those up to its cutoff; its next owner starts after them. p.mu
// must be held.
func (p *partition) upToCutoff(group []item) int {
	if !p.draining {
		return len(group)
	}
	k := 0
	for k < len(group) && group[k].rec.Offset <= p.cutoff {
		k++
	}
	return k
}

// handOut returns the part of group that may go to the router now (see
// upToCutoff; none once p stopped).
func (p *partition) handOut(group []item) []item {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return nil
	}
	return group[:p.upToCutoff(group)]
}

// send hands m, the message of the records first to last of p, to the
// router, and records them as handed out once it went (so that a drain's
// cutoff never counts a message the router did not take: nobody may read
// a dead-letter reader's channel). It gives up, reporting false, when p
// stops, the consumer closes, or p starts draining with first beyond the
// cutoff; a message up to the cutoff keeps waiting to go, since the drain
// waits for it.
func (c *consumer) send(p *partition, first, last int64, m *message.Message) bool {
	drain := p.drainc
	select {
	case <-drain: // draining already: the router may be ready too
		p.mu.Lock()
		beyond := p.stopped || first > p.cutoff
		p.mu.Unlock()
		if beyond {
			return false
		}
		drain = nil
	default:
	}
	for {
		select {
		case c.out <- m:
			for {
				if cur := p.maxOut.Load(); cur >= last || p.maxOut.CompareAndSwap(cur, last) {
					return true
				}
			}
		case <-p.stop:
			return false
		case <-c.done:
			return false
		case <-drain:
			p.mu.Lock()
			beyond := first > p.cutoff
			p.mu.Unlock()
			if beyond {
				return false
			}
			drain = nil
		}
	}
}

// snapshot returns the assigned partitions' states.
func (c *consumer) snapshot() []*partition {
	c.mu.Lock()
	defer c.mu.Unlock()
	parts := make([]*partition, 0, len(c.parts))
	for _, p := range c.parts {
		parts = append(parts, p)
	}
	return parts
}

// detach removes the partitions of tps from the assigned ones and returns
// their state.
func (c *consumer) detach(tps map[string][]int32) []*partition {
	c.mu.Lock()
	defer c.mu.Unlock()
	var parts []*partition
	for topic, ids := range tps {
		for _, id := range ids {
			if p := c.parts[topicPartition{topic, id}]; p != nil {
				parts = append(parts, p)
				delete(c.parts, topicPartition{topic, id})
			}
		}
	}
	return parts
}

// countPartitions returns the number of partitions in tps.
func countPartitions(tps map[string][]int32) int {
	n := 0
	for _, ids := range tps {
		n += len(ids)
	}
	return n
}

// stopParts stops parts: their lanes hand out nothing more, their held
// records are dropped (neither handed out nor committed: the partition's
// next owner reads them again), and their records leave the in-flight
// count. Paused ones are resumed, so that the partition fetches when it is
// assigned again (franz-go keeps a pause across revocations; a retry
// partition revoked while it waited would otherwise never fetch again,
// spring-kafka #2525).
func (c *consumer) stopParts(parts []*partition) {
	var resume map[string][]int32
	for _, p := range parts {
		p.mu.Lock()
		if p.stopped {
			p.mu.Unlock()
			continue
		}
		p.stopped = true
		close(p.stop)
		if p.paused || p.delayed {
			p.paused, p.delayed = false, false
			if resume == nil {
				resume = map[string][]int32{}
			}
			resume[p.topic] = append(resume[p.topic], p.id)
		}
		p.held = nil
		n := p.pending - p.released
		p.pending, p.released = 0, 0
		p.mu.Unlock()
		c.total.Add(-int64(n))
		select {
		case c.room <- struct{}{}:
		default:
		}
	}
	if len(resume) > 0 {
		c.cl.ResumeFetchPartitions(resume)
	}
}

// onRevoked lets the revoked partitions finish every record up to the
// highest one handed out (later ones are not handed out; the next owner
// starts with them), within three quarters of the rebalance timeout; then
// it stops them, marks and commits what finished, and only then returns,
// letting the rebalance go on. Finishing up to the highest record handed
// out, not only the ones in flight, leaves no finished record behind the
// committed offset in "key" and "unordered" ordering, where records finish
// out of order: the next owner handles none of them again.
func (c *consumer) onRevoked(ctx context.Context, cl *kgo.Client, revoked map[string][]int32) {
	c.assigned.Add(-int64(countPartitions(revoked)))
	parts := c.detach(revoked)
	if len(parts) == 0 {
		return
	}
	if !c.closing.Load() {
		for _, p := range parts {
			p.beginDrain()
		}
		wait := time.NewTimer(c.cfg.rebalanceTimeout * 3 / 4)
		defer wait.Stop()
	parts:
		for _, p := range parts {
			select {
			case <-p.settled:
			case <-wait.C:
				c.logger.Info("kafka: revoked partitions' handlers did not finish in time; their records will be delivered again", nil)
				break parts
			case <-c.done:
				break parts
			case <-ctx.Done():
				break parts
			}
		}
	}
	c.stopParts(parts)
	// Committed also when no mark moved: an earlier commit of these marks
	// may have failed, and franz-go forgets them with the partitions.
	c.mark(parts, true)
	if err := cl.CommitMarkedOffsets(ctx); err != nil {
		c.logger.Error("kafka: commit on revoke", err, nil)
	}
}

// stopFetching stops polling and makes every partition finish the records
// up to the highest one handed out, and hand out no later one (see
// onRevoked): the first step of a graceful shutdown. Records fetched and
// not handed out are fetched again by the next consumer of the group.
func (c *consumer) stopFetching() {
	c.mu.Lock()
	c.fetchStopped = true // from now on dispatch adds no partition
	c.mu.Unlock()
	c.stopPoll()
	for _, p := range c.snapshot() {
		p.beginDrain()
	}
}

// drain waits until every partition settled (see stopFetching) or stopped
// (lost meanwhile), or ctx is done.
func (c *consumer) drain(ctx context.Context) error {
	parts := c.snapshot()
	for _, p := range parts {
		select {
		case <-p.settled:
		case <-p.stop: // lost, or its revoke ran out of time: nothing to wait for
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// beginDrain makes p finish the records up to its highest one handed out
// and hand out no later one; settled closes when they finished.
func (p *partition) beginDrain() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.draining {
		p.draining, p.cutoff = true, p.maxOut.Load()
		close(p.drainc)
	}
	if p.trk.settled(p.cutoff) {
		closeOnce(p.settled)
	}
}

// onLost drops the lost partitions: nothing is committed for them (the
// member is no longer in the group), and what their handlers still finish
// is ignored.
func (c *consumer) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	c.assigned.Add(-int64(countPartitions(lost)))
	parts := c.detach(lost)
	c.stopParts(parts)
	for _, p := range parts {
		p.mu.Lock()
		p.final = true
		p.mu.Unlock()
	}
	if n := len(parts); n > 0 {
		c.lost.Add(int64(n))
		c.logger.Info("kafka: partitions lost (session expired?); their in-flight results are dropped and their records will be delivered again",
			watermill.LogFields{"partitions": n})
	}
}

// close stops polling, lets the lanes go, commits what finished, leaves the
// group and closes the channel. It is idempotent and waits for the first
// call to finish.
func (c *consumer) close() {
	c.closeOnce.Do(func() {
		c.closing.Store(true)
		c.stopPoll()
		close(c.done)
		c.loops.Wait()
		c.lanes.Wait()
		c.mark(c.snapshot(), false)
		// Committed also when no mark moved: a failed earlier commit is
		// not retried once the client left the group.
		ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
		if err := c.cl.CommitMarkedOffsets(ctx); err != nil {
			c.logger.Error("kafka: commit on close", err, nil)
		}
		cancel()
		// Leaving the group revokes every partition: onRevoked commits
		// again (nothing new) and waits for nothing (closing).
		c.cl.CloseAllowingRebalance()
		close(c.out)
		if c.closed != nil {
			c.closed()
		}
	})
}

func (c *consumer) stats() ConsumerStats {
	st := ConsumerStats{Group: c.group, Topic: c.topic, InFlight: int(c.total.Load()), LostPartitions: c.lost.Load(),
		AssignedPartitions: int(c.assigned.Load())}
	parts := c.snapshot()
	now := time.Now()
	for _, p := range parts {
		p.mu.Lock()
		if p.paused || p.delayed {
			st.PausedPartitions++
		}
		st.Held += len(p.held)
		if at, ok := p.trk.oldest(); ok {
			st.OldestInFlight = max(st.OldestInFlight, now.Sub(at))
		}
		p.mu.Unlock()
	}
	return st
}

func closeOnce(ch chan struct{}) {
	select {
	case <-ch:
	default:
		close(ch)
	}
}

// tracker keeps a partition's fetched records in offset order with a done
// flag each, and the commit mark: one past the last record of the done
// prefix. Records are added in offset order (a poll's records of a
// partition are); seq numbers them from 0.
type tracker struct {
	entries []entry
	start   int   // entries[start:] are live
	base    int64 // seq of entries[start]
	head    kgo.EpochOffset
	headSet bool
	marked  kgo.EpochOffset
}

type entry struct {
	offset int64
	epoch  int32
	done   bool
	back   bool      // given back while draining: never done, never passed
	at     time.Time // fetched
}

func (t *tracker) add(rec *kgo.Record, at time.Time) int64 {
	if t.start > 0 && t.start == len(t.entries) {
		t.entries, t.start = t.entries[:0], 0 // empty: reuse the array
	} else if t.start >= 64 && t.start*2 >= len(t.entries) {
		n := copy(t.entries, t.entries[t.start:])
		t.entries, t.start = t.entries[:n], 0
	}
	t.entries = append(t.entries, entry{offset: rec.Offset, epoch: rec.LeaderEpoch, at: at})
	return t.base + int64(len(t.entries)-1-t.start)
}

// done records that record seq finished and moves the head past the done
// prefix.
func (t *tracker) done(seq int64) {
	i := int(seq-t.base) + t.start
	if i < t.start || i >= len(t.entries) {
		return
	}
	t.entries[i].done = true
	if i != t.start {
		return
	}
	j := i
	for j < len(t.entries) && t.entries[j].done {
		j++
	}
	last := t.entries[j-1]
	t.head, t.headSet = kgo.EpochOffset{Epoch: last.epoch, Offset: last.offset + 1}, true
	t.base += int64(j - t.start)
	t.start = j
}

// mark returns the commit offset and whether it moved since the last call.
func (t *tracker) mark() (kgo.EpochOffset, bool) {
	if !t.headSet || t.head == t.marked {
		return t.head, false
	}
	t.marked = t.head
	return t.head, true
}

// giveBack records that record seq, not finished, was given back: the
// head never moves past it, and settled counts it.
func (t *tracker) giveBack(seq int64) {
	if i := int(seq-t.base) + t.start; i >= t.start && i < len(t.entries) && !t.entries[i].done {
		t.entries[i].back = true
	}
}

// settled reports whether every record up to offset cutoff finished or
// was given back.
func (t *tracker) settled(cutoff int64) bool {
	for i := t.start; i < len(t.entries) && t.entries[i].offset <= cutoff; i++ {
		if !t.entries[i].done && !t.entries[i].back {
			return false
		}
	}
	return true
}

// oldest returns when the oldest record not yet finished was fetched.
func (t *tracker) oldest() (time.Time, bool) {
	if t.start == len(t.entries) {
		return time.Time{}, false
	}
	return t.entries[t.start].at, true
}
