package kafka

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/busline/busline/bus/broker"
	"github.com/busline/busline/internal/tlsconfig"
)

// TLSConfig holds TLS settings; the zero value means no TLS.
type TLSConfig = tlsconfig.Config

// Config configures the Kafka broker. Zero fields mean the documented
// defaults; only Brokers is required.
type Config struct {
	// Brokers lists the bootstrap brokers, host:port. Required.
	Brokers []string
	// ClientID names this client to the brokers. Zero: "busline".
	ClientID string
	// InitialOffset is where a consumer group with no committed offset
	// starts: "oldest" or "newest". Zero: "oldest", so that nothing published
	// before the group first joined is skipped (Sarama's and Watermill's
	// default, "newest", silently skips it).
	InitialOffset string
	// Partitions is the partition count of topics the bus creates. Zero: 1.
	Partitions int32
	// ReplicationFactor of topics the bus creates. Zero: 1.
	ReplicationFactor int16
	// RebalanceTimeout is how long the group coordinator waits for every
	// member to rejoin during a rebalance, and so bounds how long a member
	// whose partitions are revoked takes to finish their records up to the
	// highest one it handed out before it commits and lets go (three
	// quarters of it; the rest is margin). Zero: 60s. A handler still
	// running then is not waited for: its record is delivered again to the
	// partition's new owner.
	RebalanceTimeout time.Duration
	// SessionTimeout is how long the group coordinator waits for a member's
	// heartbeat before it takes the member's partitions away: after a crash
	// (SIGKILL, a lost machine) the partitions of the dead member are not
	// consumed for this long. Heartbeats go every third of it, at most
	// every 3s. Zero: 10s (Kafka's default before 3.0; Kafka 3.0 and
	// franz-go use 45s, which makes a crash cost 45s of its partitions'
	// consumption). It must lie within the brokers'
	// group.min.session.timeout.ms and group.max.session.timeout.ms.
	SessionTimeout time.Duration
	// InstanceID names this process among the members of its consumer
	// groups: stable across its restarts and unique among the processes
	// running at once (a pod or host name). Never share one between live
	// processes: they would fence each other.
	//
	// When set, every subscription is a static member of its group
	// (KIP-345), with the group instance id "<InstanceID>-<n>" (n counts
	// this broker's subscriptions of the group, from 0: one per handler).
	// A restarted process then takes its partitions back at once, with no
	// rebalance, instead of waiting SessionTimeout for the group to drop
	// the crashed member. The cost: a process that stops for good keeps its
	// partitions unconsumed for SessionTimeout, since a static member does
	// not leave the group on Close.
	//
	// It is also part of the transactional ids of transactional handlers
	// (bus.WithKafkaTransactions), so that a restarted process fences its
	// dead predecessor and aborts the transaction it left open at once.
	//
	// Zero: dynamic membership, and a random id per Broker for the
	// transactional ids, which is safe, but a crash then leaves its open
	// transaction to the brokers' transaction timeout (40s): until then the
	// group's new member cannot fetch its partitions' committed offsets,
	// and read_committed readers of its output topics wait.
	InstanceID string
	// Ordering is how a handler's records may run concurrently, unless the
	// handler sets its own (bus.WithOrdering): "partition" (one record of a
	// partition at a time, in offset order; partitions in parallel), "key"
	// (records of different keys of one partition concurrently, each key
	// in order; records without a key share one lane per partition) or
	// "unordered" (any record at any time). Zero: "partition".
	Ordering string
	// MaxInFlight bounds the records one subscription has fetched and not
	// yet finished (handed to the handler, waiting behind a busy key or
	// partition, or waiting out a nack delay): no more are polled until
	// some finish. Zero: 1024.
	MaxInFlight int
	// MaxInFlightPerPartition is a partition's share of MaxInFlight when
	// it is slow: a partition that holds more records than this, the
	// oldest of them fetched 500ms ago or earlier (a stuck record or key, a
	// nack loop, a slow handler), while other partitions are assigned, is
	// paused (it fetches nothing) until it holds half as many, and its
	// records beyond this many stop counting against MaxInFlight, so that
	// the other partitions get room. A subscription therefore holds at most
	// MaxInFlight records plus, per slow partition, what it held beyond its
	// share when it was paused: never more than MaxInFlight per assigned
	// partition. A partition that merely runs ahead is not paused: a pause
	// drops what the client fetched ahead for it, which is then fetched
	// again. Zero: 256 (at most MaxInFlight).
	MaxInFlightPerPartition int
	// CommitInterval is how often a subscription commits the offsets of
	// what it finished. A partition's committed offset is that of its
	// oldest record not yet finished, so records finish out of order but
	// are committed in order. Offsets are committed also when partitions
	// are revoked and on Close. Zero: 1s; a crash redelivers up to about
	// this much finished work.
	CommitInterval time.Duration
	// TLS configures TLS to the brokers. Zero: plaintext.
	TLS TLSConfig
	// SASL configures SASL authentication. Zero: none.
	SASL SASLConfig
	// Partitioner names how the publisher maps a record key
	// (ce_partitionkey) to a partition: "murmur2" (the Java client's,
	// franz-go's, and librdkafka's murmur2 partitioners), "sarama"
	// (Sarama's default hash: FNV-1a) or "crc32" (librdkafka's default,
	// consistent_random). Producers sharing a topic must agree, or one key
	// lands on two partitions; see [PartitionerMurmur2] and the others.
	// Zero: "murmur2".
	Partitioner string
}

// SASLConfig configures SASL authentication. The zero value means none.
type SASLConfig struct {
	// Mechanism is "PLAIN", "SCRAM-SHA-256" or "SCRAM-SHA-512". Empty: no SASL.
	Mechanism string
	// User is the SASL user name.
	User string
	// Password is the SASL password.
	Password string
}

// Validate reports every problem of c at once.
func (c Config) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("kafka: no brokers (set BUSLINE_KAFKA_BROKERS)"))
	}
	for _, b := range c.Brokers {
		if !strings.Contains(b, ":") {
			errs = append(errs, fmt.Errorf("kafka: broker %q is not host:port", b))
		}
	}
	switch strings.ToLower(c.InitialOffset) {
	case "", "oldest", "newest":
	default:
		errs = append(errs, fmt.Errorf("kafka: initial offset %q is neither oldest nor newest", c.InitialOffset))
	}
	if !validPartitioner(c.Partitioner) {
		errs = append(errs, fmt.Errorf("kafka: partitioner %q is not one of murmur2, sarama, crc32", c.Partitioner))
	}
	if c.Partitions < 0 {
		errs = append(errs, fmt.Errorf("kafka: partitions %d is negative", c.Partitions))
	}
	if c.ReplicationFactor < 0 {
		errs = append(errs, fmt.Errorf("kafka: replication factor %d is negative", c.ReplicationFactor))
	}
	if c.RebalanceTimeout < 0 {
		errs = append(errs, fmt.Errorf("kafka: rebalance timeout %v is negative", c.RebalanceTimeout))
	}
	if err := (broker.SubscriberOptions{Ordering: c.Ordering}).Validate(); err != nil {
		errs = append(errs, fmt.Errorf("kafka: %w", err))
	}
	if c.MaxInFlight < 0 {
		errs = append(errs, fmt.Errorf("kafka: max in flight %d is negative", c.MaxInFlight))
	}
	if c.MaxInFlightPerPartition < 0 {
		errs = append(errs, fmt.Errorf("kafka: max in flight per partition %d is negative", c.MaxInFlightPerPartition))
	}
	if c.SessionTimeout < 0 {
		errs = append(errs, fmt.Errorf("kafka: session timeout %v is negative", c.SessionTimeout))
	}
	if c.CommitInterval < 0 {
		errs = append(errs, fmt.Errorf("kafka: commit interval %v is negative", c.CommitInterval))
	}
	switch strings.ToUpper(c.SASL.Mechanism) {
	case "":
		if c.SASL.User != "" || c.SASL.Password != "" {
			errs = append(errs, errors.New("kafka: SASL user or password set without a mechanism"))
		}
	case "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512":
		if c.SASL.User == "" {
			errs = append(errs, errors.New("kafka: SASL mechanism set without a user"))
		}
	default:
		errs = append(errs, fmt.Errorf("kafka: SASL mechanism %q is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", c.SASL.Mechanism))
	}
	if err := c.TLS.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("kafka: %w", err))
	}
	return errors.Join(errs...)
}

// Defaults of the zero Config fields.
const (
	defaultClientID                = "busline"
	defaultRebalanceTimeout        = 60 * time.Second
	defaultMaxInFlight             = 1024
	defaultMaxInFlightPerPartition = 256
	defaultCommitInterval          = time.Second
	defaultSessionTimeout          = 10 * time.Second
)

// withDefaults returns c with every zero field set to its documented default.
func (c Config) withDefaults() Config {
	if c.ClientID == "" {
		c.ClientID = defaultClientID
	}
	c.InitialOffset = strings.ToLower(c.InitialOffset) // validated case-insensitively
	if c.InitialOffset == "" {
		c.InitialOffset = "oldest"
	}
	if c.Partitions == 0 {
		c.Partitions = 1
	}
	if c.ReplicationFactor == 0 {
		c.ReplicationFactor = 1
	}
	if c.RebalanceTimeout == 0 {
		c.RebalanceTimeout = defaultRebalanceTimeout
	}
	if c.Ordering == "" {
		c.Ordering = broker.OrderPartition
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = defaultMaxInFlight
	}
	if c.MaxInFlightPerPartition == 0 {
		c.MaxInFlightPerPartition = defaultMaxInFlightPerPartition
	}
	c.MaxInFlightPerPartition = min(c.MaxInFlightPerPartition, c.MaxInFlight)
	if c.CommitInterval == 0 {
		c.CommitInterval = defaultCommitInterval
	}
	if c.SessionTimeout == 0 {
		c.SessionTimeout = defaultSessionTimeout
	}
	return c
}
