package kafka

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/busline/busline/bus/broker"
)

// connectTimeout bounds how long New waits for a broker to answer.
const connectTimeout = 15 * time.Second

// The capabilities of the Kafka broker.
var (
	_ broker.Broker        = (*Broker)(nil)
	_ broker.Configurable  = (*Broker)(nil)
	_ broker.Transactional = (*Broker)(nil)
	_ broker.Drainer       = (*Broker)(nil)
	_ broker.Lagger        = (*Broker)(nil)
	_ broker.Redelivering  = (*Broker)(nil)
	_ broker.Browser       = (*Broker)(nil)
)

// Broker is the Kafka broker of a bus: one shared publisher, a subscriber
// per consumer group, and an admin client for topics, health and lag.
// It is safe for concurrent use.
type Broker struct {
	cfg    Config
	logger watermill.LoggerAdapter

	pub   *publisher
	kcl   *kgo.Client
	admin *kadm.Client
	// txnInstance is Config.InstanceID, or a random id of this Broker:
	// part of the transactional ids (transact.go).
	txnInstance string

	mu        sync.Mutex
	closed    bool
	subs      []*subscriber
	instances map[string]map[int]bool // group -> static member indexes in use
}

// New validates cfg, connects the publisher to the brokers and returns the
// broker. logger may be nil (no logging). It fails when no broker answers
// within connectTimeout or the brokers refuse the credentials; subscribers
// connect on Subscribe.
func New(cfg Config, logger watermill.LoggerAdapter) (*Broker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	adminOpts, err := cfg.kgoOptions()
	if err != nil {
		return nil, err
	}
	kcl, err := kgo.NewClient(adminOpts...)
	if err != nil {
		return nil, fmt.Errorf("kafka: admin client: %w", err)
	}
	pub, err := newPublisher(append(slices.Clone(adminOpts), cfg.PartitionerOptions()...), deliveryTimeout)
	if err != nil {
		kcl.Close()
		return nil, fmt.Errorf("kafka: publisher: %w", err)
	}
	// franz-go dials lazily: a broker that does not answer, or refuses
	// the credentials, must fail New, not the first Publish.
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	if err := pub.cl.Ping(ctx); err != nil {
		pub.Close()
		kcl.Close()
		return nil, fmt.Errorf("kafka: connect to %s: %w", strings.Join(cfg.Brokers, ","), err)
	}
	return &Broker{
		cfg:         cfg,
		logger:      logger,
		pub:         pub,
		kcl:         kcl,
		admin:       kadm.NewClient(kcl),
		txnInstance: cmp.Or(cfg.InstanceID, watermill.NewShortUUID()),
	}, nil
}

// Publisher returns the broker's one shared publisher. Publish hands all
// its messages to a franz-go producer at once (produce requests batched
// per broker) and returns once every message was acknowledged by
// all in-sync replicas or failed. Order per partition, and so per key, is
// the order of the messages. When some fail, the others are still written
// and the error is a *[broker.PublishError] listing exactly the failed ones.
// Close waits for the Publish calls in flight; Publish after Close returns
// [broker.ErrClosed]. It is safe for concurrent use.
func (b *Broker) Publisher() message.Publisher { return b.pub }

// Subscriber returns a new subscriber in the consumer group group, which
// must not be empty, with the ordering of Config.Ordering. See
// [Broker.SubscriberWith].
func (b *Broker) Subscriber(group string) (message.Subscriber, error) {
	return b.SubscriberWith(group, broker.SubscriberOptions{})
}

// SubscriberWith returns a new subscriber in the consumer group group,
// which must not be empty, handing out records as cfg says. Each Subscribe
// call joins the group as a member of its own (a franz-go group consumer,
// cooperative-sticky assignment); each record of a topic reaches one member
// of every group. A group with no committed offset starts at
// Config.InitialOffset (oldest by default). Subscribe asks the brokers
// which retry topics of the group exist (see the package documentation,
// Delayed redelivery); with RetryDelays it fails when they cannot tell
// within 15s, without it logs that and reads no retry topic.
//
// A record is handed out when its ordering allows (see Config.Ordering),
// and its offset is committed once it and every earlier record of its
// partition were acked. A nacked record is handed out again at once (the
// bus's middleware stack waited before it nacked, holding only the record's
// lane: its partition, or its key). When partitions are revoked, each finishes the records up to the
// highest one it handed out (within three quarters of
// Config.RebalanceTimeout), hands out no later one, commits what finished,
// and then the rebalance goes on. Closing the subscriber commits what
// finished and leaves the group; what was in flight is delivered again
// later.
func (b *Broker) SubscriberWith(group string, cfg broker.SubscriberOptions) (message.Subscriber, error) {
	if group == "" {
		return nil, errors.New("kafka: empty consumer group")
	}
	if err := errors.Join(cfg.Validate(), validRetryDelays(cfg.RetryDelays)); err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, broker.ErrClosed
	}
	cc := consumerConfig{
		ordering:         cmp.Or(cfg.Ordering, b.cfg.Ordering),
		batch:            cfg.BatchSize,
		maxInFlight:      int64(b.cfg.MaxInFlight),
		maxPerPartition:  b.cfg.MaxInFlightPerPartition,
		commitInterval:   b.cfg.CommitInterval,
		rebalanceTimeout: b.cfg.RebalanceTimeout,
		transactions:     cfg.Transactions,
		retryDelays:      slices.Clone(cfg.RetryDelays),
	}
	if cc.transactions {
		cc.ordering = broker.OrderPartition
	}
	if cc.batch > 1 {
		if cfg.Ordering == "" {
			cc.ordering = broker.OrderPartition
		}
		// A batch must fit a partition's share of the in-flight bound.
		cc.maxPerPartition = max(cc.maxPerPartition, cc.batch)
		cc.maxInFlight = max(cc.maxInFlight, int64(cc.batch))
	}
	sub := &subscriber{b: b, group: group, cfg: cc}
	b.subs = append(b.subs, sub)
	return sub, nil
}

// StopFetching makes every subscription stop polling: each partition
// finishes the records up to the highest one it handed out (in "key" and
// "unordered" ordering some records below it may still wait behind a busy
// key) and hands out no later one, so that what finished is one contiguous
// prefix per partition and the group's next consumer handles none of it
// again. It is the first step of a graceful shutdown, before [Broker.Drain].
func (b *Broker) StopFetching() {
	for _, c := range b.consumers() {
		c.stopFetching()
	}
}

// Drain waits until every subscription's partitions finished what
// StopFetching left them, or ctx is done.
func (b *Broker) Drain(ctx context.Context) error {
	for _, c := range b.consumers() {
		if err := c.drain(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (b *Broker) consumers() []member {
	b.mu.Lock()
	subs := append([]*subscriber(nil), b.subs...)
	b.mu.Unlock()
	var cs []member
	for _, s := range subs {
		s.mu.Lock()
		cs = append(cs, s.consumers...)
		s.mu.Unlock()
	}
	return cs
}

// instanceID returns the static group instance id of a new subscription
// of group, "" without Config.InstanceID, and the function that frees it
// when the subscription closes: the lowest index free, so that a process
// that subscribes in the same order after a restart gets the same ids, and
// a reader that comes and goes (DeadLetters) does not use up new ones.
func (b *Broker) instanceID(group string) (string, func()) {
	if b.cfg.InstanceID == "" {
		return "", func() {}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.instances == nil {
		b.instances = map[string]map[int]bool{}
	}
	used := b.instances[group]
	if used == nil {
		used = map[int]bool{}
		b.instances[group] = used
	}
	n := 0
	for used[n] {
		n++
	}
	used[n] = true
	return b.cfg.InstanceID + "-" + strconv.Itoa(n), func() {
		b.mu.Lock()
		delete(used, n)
		b.mu.Unlock()
	}
}

// forget removes a closed subscriber from the broker's list.
func (b *Broker) forget(s *subscriber) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.subs = slices.DeleteFunc(b.subs, func(x *subscriber) bool { return x == s })
}

// ConsumerStats returns the stats of every subscription of the broker's
// subscribers.
func (b *Broker) ConsumerStats() []ConsumerStats {
	b.mu.Lock()
	subs := append([]*subscriber(nil), b.subs...)
	b.mu.Unlock()
	var out []ConsumerStats
	for _, s := range subs {
		out = append(out, s.stats()...)
	}
	return out
}

// Prepare creates topic with Config.Partitions partitions and
// Config.ReplicationFactor replicas unless it exists. On Kafka a group needs
// no preparation: with the default initial offset (oldest) a new group reads
// the topic from its beginning, so nothing published after Prepare is
// skipped. (With "newest", messages published before the group's first join
// are skipped.)
func (b *Broker) Prepare(ctx context.Context, topic, group string) error {
	if b.isClosed() {
		return broker.ErrClosed
	}
	_, err := b.admin.CreateTopic(ctx, b.cfg.Partitions, b.cfg.ReplicationFactor, nil, topic)
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return fmt.Errorf("kafka: create topic %s: %w", topic, err)
	}
	return nil
}

// Ping sends a metadata request to the brokers and reports whether one
// answered before ctx ended.
func (b *Broker) Ping(ctx context.Context) error {
	if b.isClosed() {
		return broker.ErrClosed
	}
	if err := b.kcl.Ping(ctx); err != nil {
		return fmt.Errorf("kafka: ping: %w", err)
	}
	return nil
}

// Lag returns the consumer lag of group: for each topic and partition the
// group has committed offsets for or is assigned, how many records lie
// between its committed offset and the partition's end. A partition with no
// commit counts from the partition's start. A group the brokers do not know
// has an empty lag. It asks the brokers each time.
func (b *Broker) Lag(ctx context.Context, group string) (map[string]map[int32]int64, error) {
	if b.isClosed() {
		return nil, broker.ErrClosed
	}
	lags, err := b.admin.Lag(ctx, group)
	if err != nil {
		return nil, fmt.Errorf("kafka: lag of group %s: %w", group, err)
	}
	gl, ok := lags[group]
	if !ok || errors.Is(gl.DescribeErr, kerr.GroupIDNotFound) {
		// Kafka describes an unknown group as Dead; some brokers say
		// GROUP_ID_NOT_FOUND. Either way nothing is committed.
		return map[string]map[int32]int64{}, nil
	}
	if err := gl.Error(); err != nil {
		return nil, fmt.Errorf("kafka: lag of group %s: %w", group, err)
	}
	out := make(map[string]map[int32]int64, len(gl.Lag))
	for topic, parts := range gl.Lag {
		m := make(map[int32]int64, len(parts))
		for p, l := range parts {
			if l.Err != nil {
				return nil, fmt.Errorf("kafka: lag of group %s, %s/%d: %w", group, topic, p, l.Err)
			}
			m[p] = l.Lag
		}
		out[topic] = m
	}
	return out, nil
}

// Close closes every subscriber the broker made, then the publisher, then
// the admin client. It is idempotent.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	subs := b.subs
	b.subs = nil
	b.mu.Unlock()

	var errs []error
	for _, s := range subs {
		if err := s.Close(); err != nil {
			errs = append(errs, fmt.Errorf("kafka: close subscriber: %w", err))
		}
	}
	if err := b.pub.Close(); err != nil {
		errs = append(errs, err)
	}
	b.admin.Close()
	return errors.Join(errs...)
}

func (b *Broker) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// ClientOptions returns franz-go client options that connect the way the
// broker does: seed brokers, client id, TLS and SASL from c, defaults
// applied, for clients of your own (a producer that must partition like the
// bus, with [Config.PartitionerOptions], or a reader outside any group).
func (c Config) ClientOptions() ([]kgo.Opt, error) { return c.withDefaults().kgoOptions() }

// kgoOptions configures the connection of the franz-go clients: the
// publisher's, and the one behind Prepare, Ping and Lag (unlike Sarama's
// admin it honours contexts). c has its defaults applied.
func (c Config) kgoOptions() ([]kgo.Opt, error) {
	opts := []kgo.Opt{
		kgo.SeedBrokers(c.Brokers...),
		kgo.ClientID(c.ClientID),
	}
	tlsCfg, err := c.TLS.Load()
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	if tlsCfg != nil {
		opts = append(opts, kgo.DialTLSConfig(tlsCfg))
	}
	var mech sasl.Mechanism
	switch strings.ToUpper(c.SASL.Mechanism) {
	case "PLAIN":
		mech = plain.Auth{User: c.SASL.User, Pass: c.SASL.Password}.AsMechanism()
	case "SCRAM-SHA-256":
		mech = scram.Auth{User: c.SASL.User, Pass: c.SASL.Password}.AsSha256Mechanism()
	case "SCRAM-SHA-512":
		mech = scram.Auth{User: c.SASL.User, Pass: c.SASL.Password}.AsSha512Mechanism()
	}
	if mech != nil {
		opts = append(opts, kgo.SASL(mech))
	}
	return opts, nil
}
