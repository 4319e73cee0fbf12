package bus

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/broker"
	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/bus/memory"
	"github.com/busline/busline/internal/env"
	"github.com/busline/busline/middleware"
)

// Broker names for [Config].Broker.
const (
	BrokerMemory = "memory"
	BrokerKafka  = "kafka"
	BrokerAMQP   = "amqp"
)

// Config configures a [Bus]. The zero value runs on the in-process broker
// with the safe defaults documented on each field. Switching broker is a
// configuration change only: set Broker and that broker's section, in code
// or through the BUSLINE_* environment variables read by [ConfigFromEnv]
// (each field names its variable; [EnvVars] lists them all).
type Config struct {
	// Broker selects the broker: "memory", "kafka" or "amqp".
	// Zero: "memory", the in-process broker. Env: BUSLINE_BROKER.
	Broker string
	// Group prefixes the consumer group of every handler: a handler named
	// h consumes as group "<Group>.<h>", so each handler gets every message
	// of its topic and instances of one service share the work.
	// Zero: "busline". Env: BUSLINE_GROUP.
	Group string
	// DeadLetterTopic is where messages that failed for good go, with the
	// reason in their metadata. Zero: "busline.deadletter".
	// Env: BUSLINE_DEAD_LETTER_TOPIC.
	DeadLetterTopic string
	// ShutdownTimeout bounds the drain when Run's context ends: in-flight
	// handlers get this long to finish. Zero: 30s.
	// Env: BUSLINE_SHUTDOWN_TIMEOUT (a Go duration, e.g. 10s).
	ShutdownTimeout time.Duration
	// RedeliveryDelays are the waits of the delayed redelivery tier: when a
	// handler's in-process retries are exhausted and the error is not
	// permanent, the message goes back to the broker (RabbitMQ wait queue,
	// Kafka retry topic, in-process timer) and comes back to the same
	// handler after the next delay; the consumer moves on meanwhile. The
	// number of delays is the number of delayed rounds; after the last the
	// message is dead-lettered with the totals of every round. Nil: 1s,
	// 10s, 1m, 10m, 1h ([middleware.DefaultRedeliveryDelays]); [NoRedelivery]
	// (an empty list) dead-letters as soon as the in-process retries are
	// exhausted. Per handler: [WithRedeliveryDelays].
	// Env: BUSLINE_REDELIVERY_DELAYS (comma-separated durations, or "none").
	RedeliveryDelays []time.Duration
	// RedeliveryMaxTotal caps the whole retry budget: no delayed round
	// starts later than this after the first failure. Zero: 2h. Negative:
	// no cap. Env: BUSLINE_REDELIVERY_MAX_TOTAL.
	RedeliveryMaxTotal time.Duration

	// Memory, Kafka and AMQP configure the brokers; only the selected
	// one's is used. Their variables are BUSLINE_MEMORY_*, BUSLINE_KAFKA_*
	// and BUSLINE_AMQP_* ([EnvVars] lists every variable, the README's
	// configuration reference describes each).
	Memory memory.Config
	Kafka  kafka.Config
	AMQP   amqp.Config
}

// Default values of [Config] fields left zero.
const (
	DefaultGroup           = "busline"
	DefaultDeadLetterTopic = "busline.deadletter"
	DefaultShutdownTimeout = 30 * time.Second
)

// Validate reports every problem of c at once, joined with errors.Join.
// Only the selected broker's section is checked.
func (c Config) Validate() error {
	var errs []error
	if e, err := brokerNamed(c.Broker); err != nil {
		errs = append(errs, err)
	} else {
		errs = append(errs, e.validate(c))
	}
	if c.ShutdownTimeout < 0 {
		errs = append(errs, fmt.Errorf("bus: shutdown timeout %v is negative", c.ShutdownTimeout))
	}
	if err := broker.ValidateDelays(c.RedeliveryDelays); err != nil {
		errs = append(errs, fmt.Errorf("bus: %w", err))
	}
	if strings.ContainsAny(c.Group, " \t\n") {
		errs = append(errs, fmt.Errorf("bus: group %q contains white space", c.Group))
	}
	if strings.ContainsAny(c.DeadLetterTopic, " \t\n") {
		errs = append(errs, fmt.Errorf("bus: dead-letter topic %q contains white space", c.DeadLetterTopic))
	}
	return errors.Join(errs...)
}

// NoRedelivery, as Config.RedeliveryDelays, switches the delayed
// redelivery tier off.
var NoRedelivery = []time.Duration{}

func (c Config) withDefaults() Config {
	if e, err := brokerNamed(c.Broker); err == nil {
		c.Broker = e.name
	}
	if c.Group == "" {
		c.Group = DefaultGroup
	}
	if c.DeadLetterTopic == "" {
		c.DeadLetterTopic = DefaultDeadLetterTopic
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.RedeliveryDelays == nil {
		c.RedeliveryDelays = slices.Clone(middleware.DefaultRedeliveryDelays)
	}
	if c.RedeliveryMaxTotal == 0 {
		c.RedeliveryMaxTotal = middleware.DefaultRedeliveryMaxTotal
	}
	return c
}

// ConfigFromEnv reads a Config from the BUSLINE_* environment variables
// listed on [Config]'s fields. Unset variables leave their field zero, which
// means its default. Every malformed value is reported, joined; the result
// is not validated (call [Config.Validate], or let [New] do it).
func ConfigFromEnv() (Config, error) {
	return configFromLookup(os.LookupEnv)
}

func configFromLookup(lookup func(string) (string, bool)) (Config, error) {
	e := env.Reader{Lookup: lookup}
	var c Config
	for _, v := range envTable {
		v.set(&c, &e, v.Name)
	}
	return c, e.Err()
}

// EnvVar is one environment variable [ConfigFromEnv] reads.
type EnvVar struct {
	// Name is the variable's name.
	Name string
	// Default is what the variable means when unset, as the README's
	// configuration table says it ("" where the README names the
	// variable inside another's row, such as the TLS file variables).
	Default string
}

// EnvVars returns every variable [ConfigFromEnv] reads, in the order of
// the README's configuration table. A test checks that table against it.
func EnvVars() []EnvVar {
	out := make([]EnvVar, len(envTable))
	for i, v := range envTable {
		out[i] = v.EnvVar
	}
	return out
}

// envVar is a variable and where its value goes.
type envVar struct {
	EnvVar
	set func(c *Config, e *env.Reader, name string)
}

// envTable is the one list of the BUSLINE_* variables.
var envTable = []envVar{
	{EnvVar{"BUSLINE_BROKER", "`memory`"}, func(c *Config, e *env.Reader, n string) { c.Broker = strings.ToLower(e.Str(n)) }},
	{EnvVar{"BUSLINE_GROUP", "`busline`"}, func(c *Config, e *env.Reader, n string) { c.Group = e.Str(n) }},
	{EnvVar{"BUSLINE_DEAD_LETTER_TOPIC", "`busline.deadletter`"}, func(c *Config, e *env.Reader, n string) { c.DeadLetterTopic = e.Str(n) }},
	{EnvVar{"BUSLINE_SHUTDOWN_TIMEOUT", "`30s`"}, func(c *Config, e *env.Reader, n string) { c.ShutdownTimeout = e.Duration(n) }},
	{EnvVar{"BUSLINE_REDELIVERY_DELAYS", "`1s,10s,1m,10m,1h`"}, func(c *Config, e *env.Reader, n string) { c.RedeliveryDelays = e.Durations(n) }},
	{EnvVar{"BUSLINE_REDELIVERY_MAX_TOTAL", "`2h`"}, func(c *Config, e *env.Reader, n string) { c.RedeliveryMaxTotal = e.Duration(n) }},
	{EnvVar{"BUSLINE_MEMORY_BUFFER", "`1024`"}, func(c *Config, e *env.Reader, n string) { c.Memory.Buffer = e.Int(n) }},
	{EnvVar{"BUSLINE_MEMORY_PUBLISH_TIMEOUT", "`10s`"}, func(c *Config, e *env.Reader, n string) { c.Memory.PublishTimeout = e.Duration(n) }},
	{EnvVar{"BUSLINE_KAFKA_BROKERS", "(required for kafka)"}, func(c *Config, e *env.Reader, n string) { c.Kafka.Brokers = e.List(n) }},
	{EnvVar{"BUSLINE_KAFKA_CLIENT_ID", "`busline`"}, func(c *Config, e *env.Reader, n string) { c.Kafka.ClientID = e.Str(n) }},
	{EnvVar{"BUSLINE_KAFKA_INITIAL_OFFSET", "`oldest`"}, func(c *Config, e *env.Reader, n string) { c.Kafka.InitialOffset = e.Str(n) }},
	{EnvVar{"BUSLINE_KAFKA_PARTITIONS", "`1`"}, func(c *Config, e *env.Reader, n string) { c.Kafka.Partitions = int32(e.Int(n)) }},
	{EnvVar{"BUSLINE_KAFKA_REPLICATION_FACTOR", "`1`"}, func(c *Config, e *env.Reader, n string) { c.Kafka.ReplicationFactor = int16(e.Int(n)) }},
	{EnvVar{"BUSLINE_KAFKA_REBALANCE_TIMEOUT", "`60s`"}, func(c *Config, e *env.Reader, n string) { c.Kafka.RebalanceTimeout = e.Duration(n) }},
	{EnvVar{"BUSLINE_KAFKA_SESSION_TIMEOUT", "`10s`"}, func(c *Config, e *env.Reader, n string) { c.Kafka.SessionTimeout = e.Duration(n) }},
	{EnvVar{"BUSLINE_KAFKA_INSTANCE_ID", "(none)"}, func(c *Config, e *env.Reader, n string) { c.Kafka.InstanceID = e.Str(n) }},
	{EnvVar{"BUSLINE_KAFKA_ORDERING", "`partition`"}, func(c *Config, e *env.Reader, n string) { c.Kafka.Ordering = strings.ToLower(e.Str(n)) }},
	{EnvVar{"BUSLINE_KAFKA_MAX_IN_FLIGHT", "`1024`"}, func(c *Config, e *env.Reader, n string) { c.Kafka.MaxInFlight = e.Int(n) }},
	{EnvVar{"BUSLINE_KAFKA_MAX_IN_FLIGHT_PER_PARTITION", "`256`"}, func(c *Config, e *env.Reader, n string) { c.Kafka.MaxInFlightPerPartition = e.Int(n) }},
	{EnvVar{"BUSLINE_KAFKA_COMMIT_INTERVAL", "`1s`"}, func(c *Config, e *env.Reader, n string) { c.Kafka.CommitInterval = e.Duration(n) }},
	{EnvVar{"BUSLINE_KAFKA_TLS", "`false`"}, func(c *Config, e *env.Reader, n string) { c.Kafka.TLS = e.TLS(n) }},
	{EnvVar{"BUSLINE_KAFKA_TLS_CA_FILE", ""}, nop},
	{EnvVar{"BUSLINE_KAFKA_TLS_CERT_FILE", ""}, nop},
	{EnvVar{"BUSLINE_KAFKA_TLS_KEY_FILE", ""}, nop},
	{EnvVar{"BUSLINE_KAFKA_TLS_SERVER_NAME", ""}, nop},
	{EnvVar{"BUSLINE_KAFKA_TLS_INSECURE_SKIP_VERIFY", ""}, nop},
	{EnvVar{"BUSLINE_KAFKA_SASL_MECHANISM", "(none)"}, func(c *Config, e *env.Reader, n string) { c.Kafka.SASL.Mechanism = e.Str(n) }},
	{EnvVar{"BUSLINE_KAFKA_SASL_USER", ""}, func(c *Config, e *env.Reader, n string) { c.Kafka.SASL.User = e.Str(n) }},
	{EnvVar{"BUSLINE_KAFKA_SASL_PASSWORD", ""}, func(c *Config, e *env.Reader, n string) { c.Kafka.SASL.Password = e.Str(n) }},
	{EnvVar{"BUSLINE_KAFKA_PARTITIONER", "`murmur2`"}, func(c *Config, e *env.Reader, n string) { c.Kafka.Partitioner = e.Str(n) }},
	{EnvVar{"BUSLINE_AMQP_URL", "(required for amqp)"}, func(c *Config, e *env.Reader, n string) { c.AMQP.URL = e.Str(n) }},
	{EnvVar{"BUSLINE_AMQP_PREFETCH", "`16` (at least the concurrency)"}, func(c *Config, e *env.Reader, n string) { c.AMQP.Prefetch = e.Int(n) }},
	{EnvVar{"BUSLINE_AMQP_CONCURRENCY", "`1`"}, func(c *Config, e *env.Reader, n string) { c.AMQP.Concurrency = e.Int(n) }},
	{EnvVar{"BUSLINE_AMQP_PUBLISH_WINDOW", "`512`"}, func(c *Config, e *env.Reader, n string) { c.AMQP.PublishWindow = e.Int(n) }},
	{EnvVar{"BUSLINE_AMQP_ALLOW_UNROUTABLE", "`false`"}, func(c *Config, e *env.Reader, n string) { c.AMQP.AllowUnroutable = e.Bool(n) }},
	{EnvVar{"BUSLINE_AMQP_CHANNEL_POOL_SIZE", "`4`"}, func(c *Config, e *env.Reader, n string) { c.AMQP.ChannelPoolSize = e.Int(n) }},
	{EnvVar{"BUSLINE_AMQP_QUEUE_TYPE", "`classic`"}, func(c *Config, e *env.Reader, n string) { c.AMQP.QueueType = strings.ToLower(e.Str(n)) }},
	{EnvVar{"BUSLINE_AMQP_MAX_QUEUE_LENGTH", "`0` (unbounded)"}, func(c *Config, e *env.Reader, n string) { c.AMQP.MaxQueueLength = e.Int(n) }},
	{EnvVar{"BUSLINE_AMQP_TLS", "`false`"}, func(c *Config, e *env.Reader, n string) { c.AMQP.TLS = e.TLS(n) }},
	{EnvVar{"BUSLINE_AMQP_TLS_CA_FILE", ""}, nop},
	{EnvVar{"BUSLINE_AMQP_TLS_CERT_FILE", ""}, nop},
	{EnvVar{"BUSLINE_AMQP_TLS_KEY_FILE", ""}, nop},
	{EnvVar{"BUSLINE_AMQP_TLS_SERVER_NAME", ""}, nop},
	{EnvVar{"BUSLINE_AMQP_TLS_INSECURE_SKIP_VERIFY", ""}, nop},
}

// nop is the setter of a variable read with another (the TLS files and
// options are read with BUSLINE_*_TLS).
func nop(*Config, *env.Reader, string) {}
