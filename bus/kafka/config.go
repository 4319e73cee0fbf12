package kafka

import (
	"errors"
	"fmt"
	"strings"
	"time"

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
	// NackDelay is how long a nacked record waits before it is delivered
	// again. Zero: 1s. A nack on Kafka blocks its partition, so keep it short
	// but never zero (a zero delay is a hot loop).
	NackDelay time.Duration
	// RebalanceTimeout bounds how long a consumer group rebalance waits for
	// each member to finish the message it has in flight. Zero: 60s
	// (Sarama's default). A member whose message is still unacked then (a
	// slow handler, a nack loop, a message nobody receives) is evicted from
	// the group and its partitions go to the others, which deliver that
	// message again. watermill-kafka does not abandon the in-flight message
	// when a rebalance starts, so until this timeout the whole group stalls.
	RebalanceTimeout time.Duration
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
	if c.NackDelay < 0 {
		errs = append(errs, fmt.Errorf("kafka: nack delay %v is negative", c.NackDelay))
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
