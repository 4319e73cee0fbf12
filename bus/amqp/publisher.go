package amqp

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// publisher publishes with pipelined publisher confirms over a pool of
// confirm-mode channels.
//
// A Publish call takes one channel of the pool (round robin) and sends its
// messages on it in order, without waiting for each confirm: up to
// window messages per channel are unconfirmed at a time (across the calls
// sharing the channel). It returns when every message is confirmed,
// returned or lost with its channel, so concurrent calls pipeline on the
// pool's channels and one call's batch keeps its order in the queues.
//
// Each channel has one dispatcher goroutine that reads its confirms and
// returns. Both arrive on unbuffered Go channels from amqp091-go's reader
// goroutine, in the order RabbitMQ sent them, and RabbitMQ sends the
// basic.return of an unroutable mandatory message before its basic.ack:
// the dispatcher has seen the return before the confirm, and reports the
// message unroutable instead of confirmed.
type publisher struct {
	conn      *connection
	logger    watermill.LoggerAdapter
	mandatory bool
	window    int

	pool []*poolSlot
	next atomic.Uint64

	declMu   sync.Mutex
	declared map[string]uint64 // topic -> connection generation it was declared on

	closed    atomic.Bool
	closing   chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup // dispatchers
}

var _ message.Publisher = (*publisher)(nil)

func newPublisher(conn *connection, cfg Config, logger watermill.LoggerAdapter) *publisher {
	p := &publisher{
		conn:      conn,
		logger:    logger,
		mandatory: !cfg.AllowUnroutable,
		window:    cfg.PublishWindow,
		pool:      make([]*poolSlot, cfg.ChannelPoolSize),
		declared:  make(map[string]uint64),
		closing:   make(chan struct{}),
	}
	for i := range p.pool {
		p.pool[i] = &poolSlot{}
	}
	return p
}

// poolSlot holds one channel of the pool, reopened when it dies.
type poolSlot struct {
	mu sync.Mutex
	ch *confirmChannel
}

// confirmChannel is one confirm-mode channel and the messages in flight
// on it.
type confirmChannel struct {
	ch    *amqp091.Channel
	gen   uint64        // connection generation
	slots chan struct{} // one token per unconfirmed message: the window
	dead  chan struct{} // closed when the dispatcher ended

	pubMu sync.Mutex // serialises publishes, so lastTag predicts the next tag
	last  uint64     // delivery tag of the last publish; under pubMu

	mu       sync.Mutex
	closed   bool
	pending  map[uint64]pendingMsg // by delivery tag
	returned map[string]int        // returns not yet matched to a confirm, by UUID
}

type pendingMsg struct {
	uuid string
	b    *batch
}

// batch collects the outcome of one Publish call.
type batch struct {
	wg     sync.WaitGroup
	mu     sync.Mutex
	failed map[string]error
}

func (b *batch) fail(uuid string, err error) {
	b.mu.Lock()
	if b.failed == nil {
		b.failed = make(map[string]error)
	}
	b.failed[uuid] = err
	b.mu.Unlock()
}

// Publish publishes msgs to topic's exchange and returns when RabbitMQ has
// confirmed every one of them. Unless all were confirmed it returns a
// *[PublishError] naming each failed message. It is safe for concurrent
// use.
func (p *publisher) Publish(topic string, msgs ...*message.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	failAll := func(err error) error {
		pe := &PublishError{Topic: topic, Total: len(msgs), Failed: make(map[string]error, len(msgs))}
		for _, m := range msgs {
			pe.Failed[m.UUID] = err
		}
		return pe
	}
	if err := checkTopic(topic); err != nil {
		return failAll(err)
	}
	if p.closed.Load() {
		return failAll(ErrClosed)
	}
	cc, err := p.channel(topic)
	if err != nil {
		return failAll(err)
	}

	var b batch
	exchange := ExchangeName(topic)
	for i, m := range msgs {
		if err := p.publishOne(cc, &b, exchange, m); err != nil {
			for _, rest := range msgs[i:] {
				b.fail(rest.UUID, err)
			}
			break
		}
	}
	b.wg.Wait()
	if len(b.failed) == 0 {
		return nil
	}
	return &PublishError{Topic: topic, Total: len(msgs), Failed: b.failed}
}

// publishOne sends m on cc once the window has room and registers it for
// its confirm. An error means m was not sent (nor any later message).
func (p *publisher) publishOne(cc *confirmChannel, b *batch, exchange string, m *message.Message) error {
	pub, _ := marshaler{}.Marshal(m) // never fails
	select {
	case cc.slots <- struct{}{}:
	case <-cc.dead:
		return ErrChannelClosed
	case <-p.closing:
		return ErrClosed
	}
	cc.pubMu.Lock()
	defer cc.pubMu.Unlock()
	tag := cc.last + 1
	cc.mu.Lock()
	if cc.closed {
		cc.mu.Unlock()
		<-cc.slots
		return ErrChannelClosed
	}
	b.wg.Add(1)
	cc.pending[tag] = pendingMsg{uuid: m.UUID, b: b}
	cc.mu.Unlock()

	ctx := m.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	dc, err := cc.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, "", p.mandatory, false, pub)
	if err != nil {
		// Not sent: amqp091-go gave the delivery tag back. Unless the
		// dispatcher failed it already (the channel died), take it back.
		if cc.settle(tag) != nil {
			b.wg.Done()
		}
		if ctx.Err() == nil {
			return fmt.Errorf("%w: %w", ErrChannelClosed, err)
		}
		return err
	}
	cc.last = tag
	if dc == nil || dc.DeliveryTag != tag {
		// Only if something else published on the channel: a bug.
		p.logger.Error("AMQP publisher: delivery tag out of step, closing the channel", nil, watermill.LogFields{"expected": tag})
		_ = cc.ch.Close()
	}
	return nil
}

// settle removes the message with delivery tag tag from those in flight
// and frees its window slot. It returns nil when the tag was not in
// flight (settled already).
func (cc *confirmChannel) settle(tag uint64) *pendingMsg {
	cc.mu.Lock()
	pm, ok := cc.pending[tag]
	if ok {
		delete(cc.pending, tag)
	}
	cc.mu.Unlock()
	if !ok {
		return nil
	}
	<-cc.slots
	return &pm
}

// channel returns a live channel of the pool for a Publish to topic,
// opening one if needed, and makes sure topic's exchange is declared.
func (p *publisher) channel(topic string) (*confirmChannel, error) {
	conn, gen, err := p.conn.current()
	if err != nil {
		return nil, err
	}
	if err := p.declare(conn, gen, topic); err != nil {
		return nil, err
	}
	slot := p.pool[p.next.Add(1)%uint64(len(p.pool))]
	slot.mu.Lock()
	defer slot.mu.Unlock()
	if cc := slot.ch; cc != nil && cc.gen == gen && !cc.isDead() {
		return cc, nil
	}
	if p.closed.Load() {
		return nil, ErrClosed
	}
	if slot.ch != nil {
		_ = slot.ch.ch.Close()
	}
	cc, err := p.open(conn, gen)
	if err != nil {
		return nil, err
	}
	slot.ch = cc
	return cc, nil
}

func (cc *confirmChannel) isDead() bool {
	select {
	case <-cc.dead:
		return true
	default:
		return false
	}
}

// open opens a confirm-mode channel and starts its dispatcher.
func (p *publisher) open(conn *amqp091.Connection, gen uint64) (*confirmChannel, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("amqp: open publishing channel: %w", err)
	}
	// Unbuffered, so that they reach the dispatcher in the order RabbitMQ
	// sent them (see publisher).
	returns := ch.NotifyReturn(make(chan amqp091.Return))
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation))
	cc := &confirmChannel{
		ch:       ch,
		gen:      gen,
		slots:    make(chan struct{}, p.window),
		dead:     make(chan struct{}),
		pending:  make(map[uint64]pendingMsg),
		returned: make(map[string]int),
	}
	p.wg.Add(1)
	go p.dispatch(cc, confirms, returns)
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("amqp: confirm mode: %w", err)
	}
	return cc, nil
}

// dispatch settles each message of cc as its confirm arrives, until the
// channel closes; then it fails the messages still in flight.
func (p *publisher) dispatch(cc *confirmChannel, confirms <-chan amqp091.Confirmation, returns <-chan amqp091.Return) {
	defer p.wg.Done()
	for confirms != nil || returns != nil {
		select {
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			uuid, _ := r.Headers[uuidHeader].(string)
			cc.mu.Lock()
			cc.returned[uuid]++
			cc.mu.Unlock()
		case c, ok := <-confirms:
			if !ok {
				confirms = nil
				continue
			}
			pm := cc.settle(c.DeliveryTag)
			if pm == nil {
				continue
			}
			var err error
			cc.mu.Lock()
			if cc.returned[pm.uuid] > 0 {
				err = ErrUnroutable
				if cc.returned[pm.uuid]--; cc.returned[pm.uuid] == 0 {
					delete(cc.returned, pm.uuid)
				}
			} else if !c.Ack {
				err = ErrNacked
			}
			cc.mu.Unlock()
			if err != nil {
				pm.b.fail(pm.uuid, err)
			}
			pm.b.wg.Done()
		}
	}
	cc.mu.Lock()
	cc.closed = true
	left := cc.pending
	cc.pending = nil
	cc.mu.Unlock()
	for range left {
		<-cc.slots
	}
	for _, pm := range left {
		pm.b.fail(pm.uuid, ErrChannelClosed)
		pm.b.wg.Done()
	}
	close(cc.dead)
}

// declare declares topic's durable fanout exchange once per connection.
func (p *publisher) declare(conn *amqp091.Connection, gen uint64, topic string) error {
	p.declMu.Lock()
	defer p.declMu.Unlock()
	if p.declared[topic] == gen {
		return nil
	}
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("amqp: declare exchange %s: %w", ExchangeName(topic), err)
	}
	err = declareExchange(ch, topic)
	if cerr := ch.Close(); err == nil && cerr != nil && !errors.Is(cerr, amqp091.ErrClosed) {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("amqp: declare exchange %s: %w", ExchangeName(topic), err)
	}
	p.declared[topic] = gen
	return nil
}

// Close fails the messages still waiting for a confirm with
// [ErrChannelClosed], closes the pool's channels and makes later Publish
// calls fail with [ErrClosed]. It is idempotent.
func (p *publisher) Close() error {
	p.closeOnce.Do(func() {
		p.closed.Store(true)
		close(p.closing)
		for _, slot := range p.pool {
			slot.mu.Lock()
			if slot.ch != nil {
				_ = slot.ch.ch.Close()
			}
			slot.mu.Unlock()
		}
		p.wg.Wait()
	})
	return nil
}
