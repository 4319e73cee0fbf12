package kafka

import (
	"errors"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/busline/busline/bus/broker"
)

// A broker that takes produce requests and never answers (a crashed broker,
// a network split after the write) does not hang Publish, nor Close: after
// the delivery timeout every message of the call is reported failed, with
// franz-go's record timeout. (By default an idempotent franz-go producer
// waits for an answer about a written request for ever.) The timeouts are
// short here; the broker's are deliveryTimeout and franz-go's defaults.
func TestPublishFailsAfterDeliveryTimeoutWhenTheBrokerNeverAnswers(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	produces := make(chan struct{}, 100)
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		select {
		case produces <- struct{}{}:
		default:
		}
		return nil, nil, true // swallowed: no response
	})
	opts, err := Config{Brokers: c.ListenAddrs()}.withDefaults().kgoOptions()
	if err != nil {
		t.Fatal(err)
	}
	opts = append(opts, kgo.ProduceRequestTimeout(time.Second), kgo.RequestTimeoutOverhead(time.Second))
	p, err := newPublisher(opts, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	msgs := []*message.Message{
		message.NewMessage(watermill.NewUUID(), []byte("a")),
		message.NewMessage(watermill.NewUUID(), []byte("b")),
		message.NewMessage(watermill.NewUUID(), []byte("c")),
	}
	err = p.Publish("never-answered", msgs...)
	var pe *broker.PublishError
	if !errors.As(err, &pe) {
		t.Fatalf("Publish: %v, want a *broker.PublishError", err)
	}
	if len(pe.Failed) != len(msgs) {
		t.Errorf("%d of %d messages failed, want all: %v", len(pe.Failed), len(msgs), err)
	}
	if !errors.Is(err, kgo.ErrRecordTimeout) {
		t.Errorf("error %v, want kgo.ErrRecordTimeout", err)
	}
	select {
	case <-produces:
	default:
		t.Error("no produce request reached the broker: the test tested nothing")
	}
	if err := p.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}
