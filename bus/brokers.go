package bus

import (
	"errors"
	"fmt"
	"strings"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/broker"
	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/bus/memory"
)

// brokerEntry is one broker [Config].Broker can name: how to check its
// section of the Config and how to open it.
type brokerEntry struct {
	name     string
	validate func(Config) error
	open     func(Config, watermill.LoggerAdapter) (broker.Broker, error)
}

// brokers is the one place of package bus that names brokers: everything
// else learns what a broker can do from package broker's interfaces (a
// test, boundary_test.go, keeps it so). The first is the default.
var brokers = []brokerEntry{
	{
		name:     BrokerMemory,
		validate: func(c Config) error { return c.Memory.Validate() },
		open: func(c Config, _ watermill.LoggerAdapter) (broker.Broker, error) {
			return opened(memory.New(c.Memory))
		},
	},
	{
		name:     BrokerKafka,
		validate: func(c Config) error { return c.Kafka.Validate() },
		open: func(c Config, l watermill.LoggerAdapter) (broker.Broker, error) {
			return opened(kafka.New(c.Kafka, l))
		},
	},
	{
		name: BrokerAMQP,
		validate: func(c Config) error {
			return errors.Join(c.AMQP.Validate(), c.AMQP.ValidateDelayedTier(c.RedeliveryDelays == nil || len(c.RedeliveryDelays) > 0))
		},
		open: func(c Config, l watermill.LoggerAdapter) (broker.Broker, error) {
			return opened(amqp.New(c.AMQP, l))
		},
	},
}

// opened returns b as a broker.Broker, or nil (not a typed nil) with err.
func opened[B broker.Broker](b B, err error) (broker.Broker, error) {
	if err != nil {
		return nil, err
	}
	return b, nil
}

// brokerNamed returns the entry of name; "" names the default broker.
func brokerNamed(name string) (brokerEntry, error) {
	if name == "" {
		return brokers[0], nil
	}
	names := make([]string, len(brokers))
	for i, e := range brokers {
		if e.name == name {
			return e, nil
		}
		names[i] = e.name
	}
	return brokerEntry{}, fmt.Errorf("bus: broker %q is not one of %s", name, strings.Join(names, ", "))
}

// OpenBroker validates cfg and opens the broker it selects, as [New] does,
// for tools that work on the broker itself rather than through a bus, such
// as the dead-letter tool (cmd/busline), which reads a backlog through the
// [broker.Browser] capability. Of opts only [WithLogger] matters. The
// caller closes the broker.
func OpenBroker(cfg Config, opts ...Option) (broker.Broker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return openBroker(cfg.withDefaults(), newOptions(opts))
}

// openBroker opens the broker of cfg, which is valid and has its defaults.
func openBroker(cfg Config, o options) (broker.Broker, error) {
	e, err := brokerNamed(cfg.Broker)
	if err != nil {
		return nil, err
	}
	br, err := e.open(cfg, o.watermillLogger())
	if err != nil {
		return nil, fmt.Errorf("bus: %s: %w", e.name, err)
	}
	return br, nil
}
