package kafka_test

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Sarama's metrics library starts one process-wide meter goroutine
		// on first use and never stops it; it is not per broker.
		goleak.IgnoreTopFunction("github.com/rcrowley/go-metrics.(*meterArbiter).tick"),
		// Watermill's conformance suite reads TestConcurrentSubscribe's
		// 50 consumers through its own multiplier: a goroutine per
		// consumer forwards into one unbuffered channel that the test
		// stops reading once it has every message. A duplicate (a
		// rebalance under -race can redeliver) then blocks its forwarder,
		// and the one waiting for all of them, for good: the suite's
		// helper, not the subscriber (whose channel is closed).
		goleak.IgnoreAnyFunction("github.com/ThreeDotsLabs/watermill/internal/subscriber.(*multiplier).Subscribe.func2"),
		goleak.IgnoreAnyFunction("github.com/ThreeDotsLabs/watermill/internal/subscriber.(*multiplier).Subscribe.func3"),
	)
}
