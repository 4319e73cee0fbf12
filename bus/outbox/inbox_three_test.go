package outbox_test

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/bus/kafka"
	"github.com/busline/busline/bus/outbox"
	"github.com/busline/busline/middleware"
)

// One message reaches an inbox handler on Kafka four times, by the three
// ways a real system redelivers: the broker redelivers it after its ack was
// lost (a nack after the commit), the consumer group's coordinator forgets
// the member while the handler holds it (a rebalance: the partition is
// lost, the ack dropped, the record handed out again after the rejoin), and
// an operator replays it with the dead-letter tool's Replay. The business
// table changes exactly once.
func TestInboxThreeWaysOfRedelivery(t *testing.T) {
	p := pool(t)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(1),
		kfake.GroupMinSessionTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	loseMember := make(chan struct{}) // closed: the next heartbeat is told the member is unknown
	lost := make(chan struct{})       // closed once it was told
	var told atomic.Bool
	c.ControlKey(int16(kmsg.Heartbeat), func(r kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		select {
		case <-loseMember:
		default:
			return nil, nil, false
		}
		if told.Swap(true) {
			return nil, nil, false
		}
		defer close(lost)
		resp := r.(*kmsg.HeartbeatRequest).ResponseKind().(*kmsg.HeartbeatResponse)
		resp.ErrorCode = kerr.UnknownMemberID.Code
		return resp, nil, true
	})
	b, err := bus.New(bus.Config{Broker: bus.BrokerKafka, Group: bustest.Name("g"), Kafka: kafka.Config{
		Brokers: c.ListenAddrs(), SessionTimeout: time.Second,
	}}, bus.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	o := newOutbox(t, b, p, outbox.Config{})
	ctx := bustest.Context(t, 90*time.Second)
	effects := o.Config().Table + "_effects"
	if _, err := p.Exec(ctx, `CREATE TABLE `+effects+` (id text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = p.Exec(context.Background(), `DROP TABLE IF EXISTS `+effects) })

	var effectCalls atomic.Int64
	inbox := o.Inbox("billing", func(ctx context.Context, msg *message.Message) error {
		effectCalls.Add(1)
		_, err := outbox.TxFromContext(ctx).Exec(ctx, `INSERT INTO `+effects+` (id) VALUES ($1)`, msg.UUID)
		return err
	})
	var (
		mu         sync.Mutex
		deliveries int
		done       = make(chan struct{})
	)
	// Around the inbox: how each delivery ends after the inbox committed.
	ends := func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			out, err := h(msg)
			if err != nil {
				return out, err
			}
			mu.Lock()
			deliveries++
			n := deliveries
			mu.Unlock()
			switch n {
			case 1: // the ack is lost: the broker delivers it again
				return nil, errLostAck
			case 2: // the member is forgotten while it holds the message
				close(loseMember)
				select {
				case <-lost:
				case <-ctx.Done():
				}
			case 4:
				close(done)
			}
			return out, nil
		}
	}
	topic := bustest.Name("in")
	if err := b.Handle("billing", topic, inbox, bus.HandlerMiddleware(ends), bus.HandlerStack(func(c *middleware.StackConfig) {
		c.Disable |= middleware.StepDedup // the inbox is the dedup
		c.Retry.MaxAttempts = 1           // a lost ack goes back to the broker
	})); err != nil {
		t.Fatal(err)
	}
	run(t, b)
	msg := message.NewMessage("order-1", []byte(`{}`))
	if err := b.Publish(ctx, topic, msg); err != nil {
		t.Fatal(err)
	}
	// Deliveries 1 (lost ack), 2 (partition lost) and 3 (after the rejoin)
	// happen on their own; the fourth is the operator's replay.
	waitDeliveries := func(n int) {
		t.Helper()
		for {
			mu.Lock()
			d := deliveries
			mu.Unlock()
			if d >= n {
				return
			}
			select {
			case <-ctx.Done():
				t.Fatalf("%d of %d deliveries", d, n)
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	waitDeliveries(3)
	dl := message.NewMessage(msg.UUID, msg.Payload)
	dl.Metadata = maps.Clone(msg.Metadata)
	dl.Metadata.Set(middleware.KeyDLQTopic, topic)
	dl.Metadata.Set(middleware.KeyDLQReason, "operator")
	if _, err := b.Replay(ctx, dl); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("the replay was not delivered")
	}
	var n int
	if err := p.QueryRow(ctx, `SELECT count(*) FROM `+effects+` WHERE id = $1`, msg.UUID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 || effectCalls.Load() != 1 {
		t.Errorf("4 deliveries: %d effects, business handler ran %d times; want 1 and 1", n, effectCalls.Load())
	}
}

// errLostAck stands for an ack that never reached the broker: the stack
// nacks the message, and the broker delivers it again.
var errLostAck = middleware.Redeliver(errors.New("the ack was lost"))
