package amqp

import (
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// The watermill-amqp configuration carries the safe defaults: durable
// fanout exchange and durable queue, publisher confirms with a channel
// pool, the bounded prefetch, and the tolerant marshaler, which publishes
// persistent messages. The behaviour behind each is tested against
// RabbitMQ in the black-box tests; this pins the settings.
func TestWatermillConfig(t *testing.T) {
	b := &Broker{cfg: Config{URL: "amqp://x/"}.withDefaults()}
	c := b.config("billing")

	if !c.Exchange.Durable || c.Exchange.AutoDeleted || c.Exchange.Type != "fanout" {
		t.Errorf("exchange %+v, want durable fanout", c.Exchange)
	}
	if got := c.Exchange.GenerateName("orders"); got != "orders" {
		t.Errorf("exchange name %q", got)
	}
	if !c.Queue.Durable || c.Queue.AutoDelete || c.Queue.Exclusive {
		t.Errorf("queue %+v, want durable, shared", c.Queue)
	}
	if got := c.Queue.GenerateName("orders"); got != "orders.billing" {
		t.Errorf("queue name %q", got)
	}
	if !c.Publish.ConfirmDelivery || c.Publish.ChannelPoolSize != DefaultChannelPoolSize || c.Publish.Transactional {
		t.Errorf("publish %+v, want confirms and a pool of %d", c.Publish, DefaultChannelPoolSize)
	}
	if c.Consume.Qos.PrefetchCount != DefaultPrefetch || c.Consume.NoRequeueOnNack {
		t.Errorf("consume %+v, want prefetch %d, requeue on nack", c.Consume, DefaultPrefetch)
	}
	p, err := c.Marshaler.Marshal(message.NewMessage("id", nil))
	if err != nil || p.DeliveryMode != amqp091.Persistent {
		t.Errorf("marshal: delivery mode %d, %v; want persistent", p.DeliveryMode, err)
	}
}

func TestDefaults(t *testing.T) {
	c := Config{}.withDefaults()
	if c.Prefetch != 16 || c.ChannelPoolSize != 4 || c.NackDelay != time.Second {
		t.Errorf("defaults %+v", c)
	}
	c = Config{Prefetch: 1, ChannelPoolSize: 2, NackDelay: time.Minute}.withDefaults()
	if c.Prefetch != 1 || c.ChannelPoolSize != 2 || c.NackDelay != time.Minute {
		t.Errorf("set fields overridden: %+v", c)
	}
}
