// Package testserver gives Busline's own tests real brokers and stores: an
// in-process Kafka cluster (franz-go kfake, a real wire-protocol broker on a
// loopback port) and the local RabbitMQ, Redis and PostgreSQL servers.
//
// A helper for a local server skips the test with a clear message when the
// server is unreachable, unless the environment variable CI is set: then it
// fails the test, so that CI never silently skips.
package testserver

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rabbitmq/amqp091-go"
	"github.com/twmb/franz-go/pkg/kfake"
)

// Default addresses of the local servers; each can be overridden by the
// environment variable named in its helper.
const (
	DefaultAMQPURL     = "amqp://guest:guest@127.0.0.1:5672/"
	DefaultRedisAddr   = "127.0.0.1:6379"
	DefaultPostgresDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
)

// Kafka starts an in-process Kafka cluster with one broker on a loopback
// port, closed when the test ends, and returns its bootstrap addresses.
// Topics are created on first use with partitions partitions (at least 1).
func Kafka(tb testing.TB, partitions int32) []string {
	tb.Helper()
	if partitions < 1 {
		partitions = 1
	}
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(int(partitions)),
	)
	if err != nil {
		tb.Fatalf("testserver: start kfake: %v", err)
	}
	tb.Cleanup(c.Close)
	return c.ListenAddrs()
}

// AMQPURL returns the URL of the local RabbitMQ (BUSLINE_TEST_AMQP_URL or
// DefaultAMQPURL), after checking that it accepts connections.
func AMQPURL(tb testing.TB) string {
	tb.Helper()
	u := env("BUSLINE_TEST_AMQP_URL", DefaultAMQPURL)
	host := strings.TrimPrefix(strings.TrimPrefix(u, "amqp://"), "amqps://")
	if i := strings.LastIndex(host, "@"); i >= 0 {
		host = host[i+1:]
	}
	host, _, _ = strings.Cut(host, "/")
	Reachable(tb, "RabbitMQ", host)
	return u
}

// RedisAddr returns the address of the local Redis (BUSLINE_TEST_REDIS_ADDR
// or DefaultRedisAddr), after checking that it accepts connections.
func RedisAddr(tb testing.TB) string {
	tb.Helper()
	a := env("BUSLINE_TEST_REDIS_ADDR", DefaultRedisAddr)
	Reachable(tb, "Redis", a)
	return a
}

// PostgresDSN returns the DSN of the local PostgreSQL
// (BUSLINE_TEST_POSTGRES_DSN or DefaultPostgresDSN), after checking that it
// accepts connections.
func PostgresDSN(tb testing.TB) string {
	tb.Helper()
	d := env("BUSLINE_TEST_POSTGRES_DSN", DefaultPostgresDSN)
	Reachable(tb, "PostgreSQL", "127.0.0.1:5432")
	return d
}

// Reachable checks that addr accepts TCP connections. When it does not, the
// test is skipped with a message naming the server, or fails when CI is set.
func Reachable(tb testing.TB, name, addr string) {
	tb.Helper()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err == nil {
		conn.Close()
		return
	}
	msg := fmt.Sprintf("testserver: %s is not reachable at %s: %v", name, addr, err)
	if os.Getenv("CI") != "" {
		tb.Fatal(msg + " (CI is set, so this fails instead of skipping)")
	}
	tb.Skip(msg + " (start it, or set CI to make this a failure)")
}

func env(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// DeleteAMQP deletes queues and exchanges from the RabbitMQ at url: what a
// test declared, when it ends. Each deletion runs on a channel of its own
// (a failed one closes its channel); a queue or exchange that is already
// gone is no error. Errors fail the test, except an unreachable server,
// which only logs: the test itself already said what it needed.
func DeleteAMQP(tb testing.TB, url string, queues, exchanges []string) {
	tb.Helper()
	conn, err := amqp091.Dial(url)
	if err != nil {
		tb.Logf("testserver: clean up RabbitMQ: %v", err)
		return
	}
	defer conn.Close()
	del := func(what, name string, fn func(*amqp091.Channel) error) {
		ch, err := conn.Channel()
		if err == nil {
			err = fn(ch)
			ch.Close()
		}
		var aerr *amqp091.Error
		if err != nil && !(errors.As(err, &aerr) && aerr.Code == amqp091.NotFound) {
			tb.Errorf("testserver: delete %s %s: %v", what, name, err)
		}
	}
	for _, q := range queues {
		del("queue", q, func(ch *amqp091.Channel) error {
			_, err := ch.QueueDelete(q, false, false, false)
			return err
		})
	}
	for _, x := range exchanges {
		del("exchange", x, func(ch *amqp091.Channel) error { return ch.ExchangeDelete(x, false, false) })
	}
}
