package bus

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/bus/memory"
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
// or through the BUSLINE_* environment variables read by [ConfigFromEnv].
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

	// Memory configures the in-process broker.
	// Env: BUSLINE_MEMORY_BUFFER, BUSLINE_MEMORY_PUBLISH_TIMEOUT.
	Memory memory.Config
	// Kafka configures the Kafka broker.
	// Env: BUSLINE_KAFKA_BROKERS (comma-separated), BUSLINE_KAFKA_CLIENT_ID,
	// BUSLINE_KAFKA_INITIAL_OFFSET, BUSLINE_KAFKA_PARTITIONS,
	// BUSLINE_KAFKA_REPLICATION_FACTOR, BUSLINE_KAFKA_REBALANCE_TIMEOUT,
	// BUSLINE_KAFKA_SESSION_TIMEOUT,
	// BUSLINE_KAFKA_INSTANCE_ID,
	// BUSLINE_KAFKA_ORDERING, BUSLINE_KAFKA_MAX_IN_FLIGHT,
	// BUSLINE_KAFKA_MAX_IN_FLIGHT_PER_PARTITION,
	// BUSLINE_KAFKA_COMMIT_INTERVAL,
	// BUSLINE_KAFKA_TLS, BUSLINE_KAFKA_TLS_CA_FILE,
	// BUSLINE_KAFKA_TLS_CERT_FILE, BUSLINE_KAFKA_TLS_KEY_FILE,
	// BUSLINE_KAFKA_TLS_SERVER_NAME, BUSLINE_KAFKA_TLS_INSECURE_SKIP_VERIFY,
	// BUSLINE_KAFKA_SASL_MECHANISM, BUSLINE_KAFKA_SASL_USER,
	// BUSLINE_KAFKA_SASL_PASSWORD, BUSLINE_KAFKA_PARTITIONER,
	// BUSLINE_KAFKA_INSTANCE_ID.
	Kafka kafka.Config
	// AMQP configures the RabbitMQ broker.
	// Env: BUSLINE_AMQP_URL, BUSLINE_AMQP_PREFETCH,
	// BUSLINE_AMQP_CHANNEL_POOL_SIZE, BUSLINE_AMQP_CONCURRENCY,
	// BUSLINE_AMQP_PUBLISH_WINDOW,
	// BUSLINE_AMQP_ALLOW_UNROUTABLE,
	// BUSLINE_AMQP_TLS, BUSLINE_AMQP_TLS_CA_FILE, BUSLINE_AMQP_TLS_CERT_FILE,
	// BUSLINE_AMQP_TLS_KEY_FILE, BUSLINE_AMQP_TLS_SERVER_NAME,
	// BUSLINE_AMQP_TLS_INSECURE_SKIP_VERIFY.
	AMQP amqp.Config
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
	switch c.Broker {
	case "", BrokerMemory:
		errs = append(errs, c.Memory.Validate())
	case BrokerKafka:
		errs = append(errs, c.Kafka.Validate())
	case BrokerAMQP:
		errs = append(errs, c.AMQP.Validate())
	default:
		errs = append(errs, fmt.Errorf("bus: broker %q is not one of memory, kafka, amqp", c.Broker))
	}
	if c.ShutdownTimeout < 0 {
		errs = append(errs, fmt.Errorf("bus: shutdown timeout %v is negative", c.ShutdownTimeout))
	}
	if strings.ContainsAny(c.Group, " \t\n") {
		errs = append(errs, fmt.Errorf("bus: group %q contains white space", c.Group))
	}
	if strings.ContainsAny(c.DeadLetterTopic, " \t\n") {
		errs = append(errs, fmt.Errorf("bus: dead-letter topic %q contains white space", c.DeadLetterTopic))
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	if c.Broker == "" {
		c.Broker = BrokerMemory
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
	e := envReader{lookup: lookup}
	var c Config
	for _, v := range envTable {
		v.set(&c, &e, v.Name)
	}
	return c, errors.Join(e.errs...)
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
	set func(c *Config, e *envReader, name string)
}

// envTable is the one list of the BUSLINE_* variables.
var envTable = []envVar{
	{EnvVar{"BUSLINE_BROKER", "`memory`"}, func(c *Config, e *envReader, n string) { c.Broker = strings.ToLower(e.str(n)) }},
	{EnvVar{"BUSLINE_GROUP", "`busline`"}, func(c *Config, e *envReader, n string) { c.Group = e.str(n) }},
	{EnvVar{"BUSLINE_DEAD_LETTER_TOPIC", "`busline.deadletter`"}, func(c *Config, e *envReader, n string) { c.DeadLetterTopic = e.str(n) }},
	{EnvVar{"BUSLINE_SHUTDOWN_TIMEOUT", "`30s`"}, func(c *Config, e *envReader, n string) { c.ShutdownTimeout = e.duration(n) }},
	{EnvVar{"BUSLINE_MEMORY_BUFFER", "`1024`"}, func(c *Config, e *envReader, n string) { c.Memory.Buffer = e.integer(n) }},
	{EnvVar{"BUSLINE_MEMORY_PUBLISH_TIMEOUT", "`10s`"}, func(c *Config, e *envReader, n string) { c.Memory.PublishTimeout = e.duration(n) }},
	{EnvVar{"BUSLINE_KAFKA_BROKERS", "(required for kafka)"}, func(c *Config, e *envReader, n string) { c.Kafka.Brokers = e.list(n) }},
	{EnvVar{"BUSLINE_KAFKA_CLIENT_ID", "`busline`"}, func(c *Config, e *envReader, n string) { c.Kafka.ClientID = e.str(n) }},
	{EnvVar{"BUSLINE_KAFKA_INITIAL_OFFSET", "`oldest`"}, func(c *Config, e *envReader, n string) { c.Kafka.InitialOffset = e.str(n) }},
	{EnvVar{"BUSLINE_KAFKA_PARTITIONS", "`1`"}, func(c *Config, e *envReader, n string) { c.Kafka.Partitions = int32(e.integer(n)) }},
	{EnvVar{"BUSLINE_KAFKA_REPLICATION_FACTOR", "`1`"}, func(c *Config, e *envReader, n string) { c.Kafka.ReplicationFactor = int16(e.integer(n)) }},
	{EnvVar{"BUSLINE_KAFKA_REBALANCE_TIMEOUT", "`60s`"}, func(c *Config, e *envReader, n string) { c.Kafka.RebalanceTimeout = e.duration(n) }},
	{EnvVar{"BUSLINE_KAFKA_SESSION_TIMEOUT", "`10s`"}, func(c *Config, e *envReader, n string) { c.Kafka.SessionTimeout = e.duration(n) }},
	{EnvVar{"BUSLINE_KAFKA_INSTANCE_ID", "(none)"}, func(c *Config, e *envReader, n string) { c.Kafka.InstanceID = e.str(n) }},
	{EnvVar{"BUSLINE_KAFKA_ORDERING", "`partition`"}, func(c *Config, e *envReader, n string) { c.Kafka.Ordering = strings.ToLower(e.str(n)) }},
	{EnvVar{"BUSLINE_KAFKA_MAX_IN_FLIGHT", "`1024`"}, func(c *Config, e *envReader, n string) { c.Kafka.MaxInFlight = e.integer(n) }},
	{EnvVar{"BUSLINE_KAFKA_MAX_IN_FLIGHT_PER_PARTITION", "`256`"}, func(c *Config, e *envReader, n string) { c.Kafka.MaxInFlightPerPartition = e.integer(n) }},
	{EnvVar{"BUSLINE_KAFKA_COMMIT_INTERVAL", "`1s`"}, func(c *Config, e *envReader, n string) { c.Kafka.CommitInterval = e.duration(n) }},
	{EnvVar{"BUSLINE_KAFKA_TLS", "`false`"}, func(c *Config, e *envReader, n string) { c.Kafka.TLS = e.tls(n) }},
	{EnvVar{"BUSLINE_KAFKA_TLS_CA_FILE", ""}, nop},
	{EnvVar{"BUSLINE_KAFKA_TLS_CERT_FILE", ""}, nop},
	{EnvVar{"BUSLINE_KAFKA_TLS_KEY_FILE", ""}, nop},
	{EnvVar{"BUSLINE_KAFKA_TLS_SERVER_NAME", ""}, nop},
	{EnvVar{"BUSLINE_KAFKA_TLS_INSECURE_SKIP_VERIFY", ""}, nop},
	{EnvVar{"BUSLINE_KAFKA_SASL_MECHANISM", "(none)"}, func(c *Config, e *envReader, n string) { c.Kafka.SASL.Mechanism = e.str(n) }},
	{EnvVar{"BUSLINE_KAFKA_SASL_USER", ""}, func(c *Config, e *envReader, n string) { c.Kafka.SASL.User = e.str(n) }},
	{EnvVar{"BUSLINE_KAFKA_SASL_PASSWORD", ""}, func(c *Config, e *envReader, n string) { c.Kafka.SASL.Password = e.str(n) }},
	{EnvVar{"BUSLINE_KAFKA_PARTITIONER", "`murmur2`"}, func(c *Config, e *envReader, n string) { c.Kafka.Partitioner = e.str(n) }},
	{EnvVar{"BUSLINE_AMQP_URL", "(required for amqp)"}, func(c *Config, e *envReader, n string) { c.AMQP.URL = e.str(n) }},
	{EnvVar{"BUSLINE_AMQP_PREFETCH", "`16` (at least the concurrency)"}, func(c *Config, e *envReader, n string) { c.AMQP.Prefetch = e.integer(n) }},
	{EnvVar{"BUSLINE_AMQP_CONCURRENCY", "`1`"}, func(c *Config, e *envReader, n string) { c.AMQP.Concurrency = e.integer(n) }},
	{EnvVar{"BUSLINE_AMQP_PUBLISH_WINDOW", "`512`"}, func(c *Config, e *envReader, n string) { c.AMQP.PublishWindow = e.integer(n) }},
	{EnvVar{"BUSLINE_AMQP_ALLOW_UNROUTABLE", "`false`"}, func(c *Config, e *envReader, n string) { c.AMQP.AllowUnroutable = e.boolean(n) }},
	{EnvVar{"BUSLINE_AMQP_CHANNEL_POOL_SIZE", "`4`"}, func(c *Config, e *envReader, n string) { c.AMQP.ChannelPoolSize = e.integer(n) }},
	{EnvVar{"BUSLINE_AMQP_TLS", "`false`"}, func(c *Config, e *envReader, n string) { c.AMQP.TLS = e.tls(n) }},
	{EnvVar{"BUSLINE_AMQP_TLS_CA_FILE", ""}, nop},
	{EnvVar{"BUSLINE_AMQP_TLS_CERT_FILE", ""}, nop},
	{EnvVar{"BUSLINE_AMQP_TLS_KEY_FILE", ""}, nop},
	{EnvVar{"BUSLINE_AMQP_TLS_SERVER_NAME", ""}, nop},
	{EnvVar{"BUSLINE_AMQP_TLS_INSECURE_SKIP_VERIFY", ""}, nop},
}

// nop is the setter of a variable read with another (the TLS files and
// options are read with BUSLINE_*_TLS).
func nop(*Config, *envReader, string) {}

type envReader struct {
	lookup func(string) (string, bool)
	errs   []error
}

func (e *envReader) str(key string) string {
	v, _ := e.lookup(key)
	return strings.TrimSpace(v)
}

func (e *envReader) list(key string) []string {
	var out []string
	for _, s := range strings.Split(e.str(key), ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func (e *envReader) integer(key string) int {
	v := e.str(key)
	if v == "" {
		return 0
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		e.errs = append(e.errs, fmt.Errorf("bus: %s=%q is not an integer", key, v))
	}
	return n
}

func (e *envReader) duration(key string) time.Duration {
	v := e.str(key)
	if v == "" {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		e.errs = append(e.errs, fmt.Errorf("bus: %s=%q is not a duration like 10s or 500ms", key, v))
	}
	return d
}

func (e *envReader) boolean(key string) bool {
	v := e.str(key)
	if v == "" {
		return false
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		e.errs = append(e.errs, fmt.Errorf("bus: %s=%q is not a boolean (true or false)", key, v))
	}
	return b
}

func (e *envReader) tls(prefix string) kafka.TLSConfig {
	return kafka.TLSConfig{
		Enabled:            e.boolean(prefix),
		CAFile:             e.str(prefix + "_CA_FILE"),
		CertFile:           e.str(prefix + "_CERT_FILE"),
		KeyFile:            e.str(prefix + "_KEY_FILE"),
		ServerName:         e.str(prefix + "_SERVER_NAME"),
		InsecureSkipVerify: e.boolean(prefix + "_INSECURE_SKIP_VERIFY"),
	}
}
