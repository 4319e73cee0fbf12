package kafka

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/busline/busline/internal/testserver"
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

// A tier whose name another handler may own is not taken: the tiers of
// topic "orders" and group "eu.billing" are named as those of topic
// "orders.eu" and group "billing". Without such a topic, it is.
func TestOldTiersSkipsAmbiguousNames(t *testing.T) {
	const topic, group = "orders", "eu.billing"
	tier := RetryTopic(topic, group, 40*time.Millisecond)
	for _, tc := range []struct {
		name   string
		topics []string
		taken  bool
	}{
		{"unambiguous", []string{topic, tier, "orders.us"}, true},
		{"ambiguous", []string{topic, tier, "orders.eu"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			b, err := New(Config{Brokers: testserver.Kafka(t, 1)}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			for _, name := range tc.topics {
				if _, err := b.admin.CreateTopic(ctx, 1, 1, nil, name); err != nil {
					t.Fatal(err)
				}
			}
			tiers := map[string]time.Duration{}
			if err := b.oldTiers(ctx, topic, group, tiers); err != nil {
				t.Fatal(err)
			}
			if _, taken := tiers[tier]; taken != tc.taken {
				t.Errorf("with topics %q: tiers = %v; %s taken: %v, want %v", tc.topics, tiers, tier, taken, tc.taken)
			}
		})
	}
}

// A subscription without retry delays starts while no broker answers, as
// it did before it looked for tiers of earlier delays: it logs that it
// could not, and reads none.
func TestSubscribeWithoutDelaysNeedsNoBroker(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Brokers: c.ListenAddrs()}, nil)
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	defer b.Close()
	c.Close()
	sub, err := b.Subscriber("g")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := sub.Subscribe(ctx, "t"); err != nil {
		t.Fatalf("Subscribe with the brokers down: %v, want nil (as without tiers to find)", err)
	}
	_ = sub.Close()
}
