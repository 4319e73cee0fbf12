package kafka

import (
	"testing"
	"time"
)

// retryTopicDelay, by which a subscription finds the tiers of delays no
// longer configured, reads back the delay of every tier RetryTopic names,
// and takes no other name for one.
func TestRetryTopicDelay(t *testing.T) {
	const topic, group = "orders.v1", "svc.h"
	for _, d := range []time.Duration{time.Millisecond, 10 * time.Millisecond, 1500 * time.Millisecond,
		10 * time.Second, time.Minute, 90 * time.Minute, 2 * time.Hour, 25*time.Hour + time.Millisecond} {
		name := RetryTopic(topic, group, d)
		if got, ok := retryTopicDelay(name, topic, group); !ok || got != d {
			t.Errorf("retryTopicDelay(%q) = %v, %v; want %v, true", name, got, ok, d)
		}
	}
	for _, name := range []string{
		topic,
		topic + "." + group + ".retry.",
		topic + "." + group + ".retry.dlq",
		topic + "." + group + ".retry.10s.old",
		topic + "." + group + ".retry.0s",
		topic + "." + group + ".retry.-1s",
		topic + "." + group + ".retry.60s",  // RetryTopic names it 1m0s
		topic + "." + group + ".retry.1h5s", // and this one 1h0m5s
		topic + "." + group + ".retry.007s",
		topic + ".other.retry.10s", // another group's tier
		topic + "." + group + ".wait.10s",
	} {
		if d, ok := retryTopicDelay(name, topic, group); ok {
			t.Errorf("%q is taken for a tier of %v", name, d)
		}
	}
}
