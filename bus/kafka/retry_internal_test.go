package kafka

import (
	"regexp"
	"testing"
	"time"
)

// The pattern a subscription reads retry topics by matches every tier
// RetryTopic names, and retryTopicDelay reads its delay back; names that are
// not tiers of the handler match neither.
func TestRetryTopicPattern(t *testing.T) {
	const topic, group = "orders.v1", "svc.h"
	re := regexp.MustCompile(retryTopicPattern(topic, group))
	for _, d := range []time.Duration{time.Millisecond, 10 * time.Millisecond, 1500 * time.Millisecond,
		10 * time.Second, time.Minute, 90 * time.Minute, 2 * time.Hour, 25*time.Hour + time.Millisecond} {
		name := RetryTopic(topic, group, d)
		if !re.MatchString(name) {
			t.Errorf("pattern does not match %q", name)
		}
		if got, ok := retryTopicDelay(name, topic, group); !ok || got != d {
			t.Errorf("retryTopicDelay(%q) = %v, %v; want %v, true", name, got, ok, d)
		}
	}
	for _, name := range []string{
		topic,
		topic + "." + group + ".retry.",
		topic + "." + group + ".retry.dlq",
		topic + "." + group + ".retry.10s.old",
		topic + "." + group + ".retry.1m",   // not as Duration.String prints it
		topic + ".other.retry.10s",          // another group's tier
		"ordersXv1." + group + ".retry.10s", // the dot is not a wildcard
		topic + "." + group + ".wait.10s",
	} {
		if re.MatchString(name) {
			t.Errorf("pattern matches %q", name)
		}
		if _, ok := retryTopicDelay(name, topic, group); ok {
			t.Errorf("%q is taken for a tier", name)
		}
	}
	if _, ok := retryTopicDelay(topic+"."+group+".retry.60s", topic, group); ok {
		t.Error(`"60s" is taken for a tier: RetryTopic names that delay "1m0s"`)
	}
}
