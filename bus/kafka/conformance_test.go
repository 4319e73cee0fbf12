package kafka_test

import (
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"

	"github.com/busline/busline/bus/broker"
	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/internal/testserver"
)

// Watermill's universal Pub/Sub suite against the broker's publisher and
// subscribers on kfake, with the defaults the bus uses.
//
// Features, as watermill-kafka declares them for consumer groups:
// ConsumerGroups and Persistent. GuaranteedOrder holds per partition, so it
// is claimed only on a one-partition topic (the suite's messages carry no
// partition key). The nack delay and the rebalance timeout are shortened,
// see below.
// NewSubscriberReceivesOldMessages is not claimed: the
// suite's constructor is called again for the same consumer group, which
// continues from its commits (a new group does read old messages; see
// TestNewGroupStartsAtOldest). TestReconnect needs a restart command and is
// skipped.
func TestConformance(t *testing.T) {
	for _, tc := range []struct {
		name       string
		partitions int32
		ordered    bool
		sub        broker.SubscriberOptions
	}{
		{"OnePartition", 1, true, broker.SubscriberOptions{}},
		{"FourPartitions", 4, false, broker.SubscriberOptions{}},
		// A transactional subscription (one transaction per poll, the
		// suite's nacks abort and redo whole polls).
		{"Transactions", 4, false, broker.SubscriberOptions{Transactions: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			addrs := testserver.Kafka(t, tc.partitions)
			newPubSub := func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
				b, err := kafka.New(kafka.Config{
					Brokers:    addrs,
					Partitions: tc.partitions,
					// TestContinueAfterErrors nacks 300 times; at the
					// default 1s that alone takes 5 minutes.
					// TestTopic subscribes twice in one group and reads
					// one subscription only after the other has
					// delivered. If the unread member joins first, its
					// in-flight message blocks the rebalance the other
					// member's join needs until the member is evicted:
					// at the default 60s that exceeds the suite's 15s
					// wait. watermill-kafka's own suite sets 3s too.
					RebalanceTimeout: 3 * time.Second,
				}, watermill.NopLogger{})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = b.Close() })
				sub, err := b.SubscriberWith(group, tc.sub)
				if err != nil {
					t.Fatal(err)
				}
				return b.Publisher(), sub
			}
			tests.TestPubSub(t,
				tests.Features{
					ConsumerGroups:  true,
					Persistent:      true,
					GuaranteedOrder: tc.ordered,
				},
				func(t *testing.T) (message.Publisher, message.Subscriber) {
					// One group per test of the suite, shared by every
					// constructor call in it.
					return newPubSub(t, "conformance-"+strings.ReplaceAll(t.Name(), "/", "-"))
				},
				newPubSub,
			)
		})
	}
}
