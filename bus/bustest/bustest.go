// Package bustest helps tests of services built on Busline: unique names
// for topics, groups and queues, so that tests sharing a broker do not see
// each other's messages, and a context bounded by the test.
//
// A test of a service needs no server: the in-process broker (the zero
// [github.com/busline/busline/bus.Config]) runs the same handlers,
// middleware and dead-lettering as Kafka and RabbitMQ.
package bustest

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

var seq atomic.Int64

// Name returns a name unique to this process and test run, for topics,
// queues, groups and keys: prefix, the test's start time and a counter.
func Name(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, startNanos, seq.Add(1))
}

var startNanos = time.Now().UnixNano()

// Context returns a context cancelled when the test ends or after d,
// whichever comes first.
func Context(tb testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}
