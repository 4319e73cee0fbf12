package amqp_test

import (
	"errors"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/internal/testserver"
)

// cutProxy forwards TCP connections to target, and cuts all of those open
// at once, as a network failure or a broker restart does.
type cutProxy struct {
	ln       net.Listener
	target   string
	accepted atomic.Int64

	mu    sync.Mutex
	conns []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.accepted.Add(1)
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(s, c); s.Close(); c.Close() }()
			go func() { _, _ = io.Copy(c, s); s.Close(); c.Close() }()
		}
	}()
	return p
}

// proxiedBroker returns a broker of cfg on the local RabbitMQ, reached
// through a cutProxy, closed when the test ends.
func proxiedBroker(t *testing.T, cfg amqp.Config) (*amqp.Broker, *cutProxy) {
	t.Helper()
	u, err := url.Parse(testserver.AMQPURL(t))
	if err != nil {
		t.Fatal(err)
	}
	px := newCutProxy(t, u.Host)
	u.Host = px.ln.Addr().String()
	cfg.URL = u.String()
	b, err := amqp.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b, px
}

// cut closes every connection open through the proxy.
func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// When the connections to RabbitMQ drop, the broker redials both:
// Publish fails at once while a connection is down (with ErrNotConnected
// or ErrChannelClosed, never a silent success, also for calls in flight
// at the cut and for a topic whose exchange the publisher must declare
// first), goes through after the reconnect, and the subscription resumes
// on the same channel of messages, delivering what was published after
// the cut.
func TestReconnectsAfterConnectionLoss(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	b, px := proxiedBroker(t, amqp.Config{})
	ctx := bustest.Context(t, 2*wait)
	topic, fresh, group := tp.topic("reconnect"), tp.topic("reconnect-fresh"), tp.group("g")
	for _, tpc := range []string{topic, fresh} {
		if err := b.Prepare(ctx, tpc, group); err != nil {
			t.Fatal(err)
		}
	}
	_, msgs := subscribe(t, ctx, b, group, topic)

	// wrongErr records a Publish error that is neither ErrNotConnected nor
	// ErrChannelClosed.
	var wrongErr atomic.Pointer[error]
	check := func(err error) {
		if err != nil && !errors.Is(err, amqp.ErrNotConnected) && !errors.Is(err, amqp.ErrChannelClosed) {
			wrongErr.CompareAndSwap(nil, &err)
		}
	}

	first := message.NewMessage(watermill.NewUUID(), []byte("before"))
	if err := b.Publisher().Publish(topic, first); err != nil {
		t.Fatal(err)
	}
	if m := receive(t, msgs); m.UUID != first.UUID {
		t.Fatalf("got %s, want %s", m.UUID, first.UUID)
	} else {
		m.Ack()
	}

	// Publishers keep going through the cut; what they send may arrive.
	var (
		sent sync.Map // UUIDs the publishers tried
		stop = make(chan struct{})
		pubs sync.WaitGroup
	)
	for range 4 {
		pubs.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				m := message.NewMessage(watermill.NewUUID(), []byte("during"))
				sent.Store(m.UUID, true)
				check(b.Publisher().Publish(topic, m))
			}
		})
	}

	before := px.accepted.Load()
	px.cut()

	// Publish until a call goes through; every failed call must say why.
	after := message.NewMessage(watermill.NewUUID(), []byte("after"))
	failures := 0
	eventually(t, "a Publish after the cut to go through", func() (bool, string) {
		err := b.Publisher().Publish(topic, after)
		if err == nil {
			return true, ""
		}
		failures++
		if !errors.Is(err, amqp.ErrNotConnected) && !errors.Is(err, amqp.ErrChannelClosed) {
			t.Fatalf("Publish while reconnecting: %v, want ErrNotConnected or ErrChannelClosed", err)
		}
		return false, err.Error()
	})
	t.Logf("%d Publish calls failed while reconnecting", failures)
	close(stop)
	pubs.Wait()
	// A topic this publisher never published to: its exchange is declared
	// on the new connection.
	if err := b.Publisher().Publish(fresh, message.NewMessage(watermill.NewUUID(), nil)); err != nil {
		t.Errorf("Publish to a fresh topic after the reconnect: %v", err)
	}
	if e := wrongErr.Load(); e != nil {
		t.Errorf("a Publish during the outage failed with %v, want ErrNotConnected or ErrChannelClosed", *e)
	}

	// The subscription resumes: the message published after the cut
	// arrives (first may come again: its ack may have been held back when
	// the connection dropped, and at least once allows that).
	for {
		m := receive(t, msgs)
		m.Ack()
		if m.UUID == after.UUID {
			break
		}
		if _, ok := sent.Load(m.UUID); !ok && m.UUID != first.UUID {
			t.Fatalf("unexpected message %s", m.UUID)
		}
	}
	if got := px.accepted.Load() - before; got < 2 {
		t.Errorf("%d new connections after the cut, want both (publish and consume) redialled", got)
	}
}
