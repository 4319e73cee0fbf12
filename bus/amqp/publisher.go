package amqp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/busline/busline/bus/broker"
)

// publisher publishes with pipelined publisher confirms over a pool of
// confirm-mode channels.
//
// A Publish call takes the channel of the pool the fewest calls use (the
// first idle one, looking round robin from the last choice) and sends its
// messages on it in order with PublishWithDeferredConfirmWithContext,
// without waiting for each confirm: a message takes one of the channel's
// window slots until its confirm arrives, so at most window messages per
// channel are unconfirmed at a time (across the calls sharing it). A call
// waiting for a slot frees the slots of its own confirmed messages, so
// calls sharing a channel never wait on each other for good. Publish
// returns when every message is confirmed, nacked, or lost with its
// channel; concurrent calls pipeline on the pool's channels, and one
// call's batch keeps its order in the queues.
//
// Returns (mandatory messages RabbitMQ could not route) arrive on a Go
// channel that one goroutine per AMQP channel reads and records by message
// UUID. amqp091-go's reader goroutine hands it each return before it
// processes the confirm that follows (RabbitMQ sends basic.return before
// basic.ack), on an unbuffered channel, so the return is received before
// the confirm resolves. Publish then asks that goroutine to flush (one
// round trip per call, served only after it recorded what it received)
// and finds the returns of its messages recorded.
type publisher struct {
	conn      *connection
	logger    watermill.LoggerAdapter
	mandatory bool
	window    int

	pool []*poolSlot
	next atomic.Uint64

	declMu   sync.Mutex
	declared map[declKey]uint64 // destination -> connection generation its topology was declared on

	rejected atomic.Int64 // messages RabbitMQ nacked

	closed    atomic.Bool
	closing   chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup // returns dispatchers
}

var _ message.Publisher = (*publisher)(nil)

func newPublisher(conn *connection, cfg Config, logger watermill.LoggerAdapter) *publisher {
	p := &publisher{
		conn:      conn,
		logger:    logger,
		mandatory: !cfg.AllowUnroutable,
		window:    cfg.PublishWindow,
		pool:      make([]*poolSlot, cfg.ChannelPoolSize),
		declared:  make(map[declKey]uint64),
		closing:   make(chan struct{}),
	}
	for i := range p.pool {
		p.pool[i] = &poolSlot{}
	}
	return p
}

// poolSlot holds one channel of the pool, reopened when it dies.
type poolSlot struct {
	users atomic.Int32 // Publish calls using the slot's channel
	mu    sync.Mutex
	ch    *confirmChannel
}

// confirmChannel is one confirm-mode channel of the pool.
type confirmChannel struct {
	ch    *amqp091.Channel
	gen   uint64        // connection generation
	slots chan struct{} // one token per unconfirmed message: the window
	flush chan chan struct{}
	dead  chan struct{} // closed when the returns dispatcher ended

	mu       sync.Mutex
	returned map[string]int // returns not yet claimed, by message UUID
	closeErr *amqp091.Error // why the channel closed, when it did with an error
}

// destination is where a send goes: an exchange and routing key, and the
// topology declared (once per connection) before the first message goes
// there.
type destination struct {
	key        declKey
	exchange   string
	routingKey string
	mandatory  bool
	// declare declares the topology; nil: the exchange of topic key.name.
	declare func(*amqp091.Channel) error
}

// declKey names the topology of a destination in publisher.declared: a
// topic's exchange (wait false) or a group's wait queues (wait true).
type declKey struct {
	wait bool
	name string
}

// topicDestination is the exchange of topic. It allocates nothing: it is
// on Publish's path.
func (p *publisher) topicDestination(topic string) destination {
	return destination{key: declKey{name: topic}, exchange: ExchangeName(topic), mandatory: p.mandatory}
}

// Publish publishes msgs to topic's exchange and returns when RabbitMQ has
// confirmed every one of them. Unless all were confirmed it returns a
// *[broker.PublishError] naming each failed message. It is safe for concurrent
// use.
func (p *publisher) Publish(topic string, msgs ...*message.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	if err := checkTopic(topic); err != nil {
		return result(topic, len(msgs), failEach(nil, msgs, 0, err))
	}
	return result(topic, len(msgs), p.send(nil, p.topicDestination(topic), msgs))
}

// failEach appends a failure with err for each of msgs[from:].
func failEach(failed []broker.FailedMessage, msgs []*message.Message, from int, err error) []broker.FailedMessage {
	for i := from; i < len(msgs); i++ {
		failed = append(failed, broker.FailedMessage{Index: i, UUID: msgs[i].UUID, Err: err})
	}
	return failed
}

// result is the error of a Publish call of total messages to topic in
// which failed were not confirmed: nil when none failed, else a
// *broker.PublishError listing them in the call's order.
func result(topic string, total int, failed []broker.FailedMessage) error {
	if len(failed) == 0 {
		return nil
	}
	slices.SortFunc(failed, func(a, b broker.FailedMessage) int { return a.Index - b.Index })
	return &broker.PublishError{Topic: topic, Total: total, Failed: failed}
}

// send publishes msgs to dst on one channel of the pool, in order, and
// returns when RabbitMQ has confirmed every one of them: the messages that
// failed, with their causes, or nil. Each message is sent with ctx, or
// its own context when ctx is nil.
func (p *publisher) send(ctx context.Context, dst destination, msgs []*message.Message) []broker.FailedMessage {
	var failed []broker.FailedMessage
	fail := func(i int, err error) {
		failed = append(failed, broker.FailedMessage{Index: i, UUID: msgs[i].UUID, Err: err})
	}
	if p.closed.Load() {
		return failEach(nil, msgs, 0, broker.ErrClosed)
	}
	slot := p.take()
	defer slot.users.Add(-1)
	cc, err := p.channel(slot, dst)
	if err != nil {
		return failEach(nil, msgs, 0, err)
	}

	dcs := make([]*amqp091.DeferredConfirmation, 0, len(msgs))
	released := 0 // dcs[:released] gave their slot back
	var sendErr error
send:
	for _, m := range msgs {
		for acquired := false; !acquired; {
			var oldest <-chan struct{}
			if released < len(dcs) {
				oldest = dcs[released].Done()
			}
			select {
			case cc.slots <- struct{}{}:
				acquired = true
			case <-oldest:
				<-cc.slots
				released++
			case <-p.closing:
				sendErr = broker.ErrClosed
				break send
			}
		}
		pub, _ := marshaler{}.Marshal(m) // never fails
		mctx := ctx
		if mctx == nil {
			mctx = m.Context()
		}
		if mctx == nil {
			mctx = context.Background()
		}
		dc, err := cc.ch.PublishWithDeferredConfirmWithContext(mctx, dst.exchange, dst.routingKey, dst.mandatory, false, pub)
		if err == nil && dc == nil {
			err = errors.New("channel not in confirm mode")
		}
		if err != nil {
			<-cc.slots
			sendErr = err
			if mctx.Err() == nil {
				sendErr = fmt.Errorf("%w: %w", ErrChannelClosed, err)
			}
			break
		}
		dcs = append(dcs, dc)
	}
	for i, dc := range dcs {
		<-dc.Done()
		if i >= released {
			<-cc.slots
		}
	}
	failed = failEach(failed, msgs, len(dcs), sendErr)

	returned := dst.mandatory && cc.flushReturns()
	closed := cc.ch.IsClosed()
	closedErr := ErrChannelClosed
	if closed {
		// The channel may have closed because of dst's topology (RabbitMQ
		// closes a channel that publishes to a deleted exchange with 404):
		// declare it again before the next send to it, rather than fail
		// every one until the connection is replaced.
		p.forget(dst.key)
		if reason := cc.reason(); reason != nil {
			closedErr = fmt.Errorf("%w: %w", ErrChannelClosed, reason)
		}
	}
	for i, dc := range dcs {
		uuid := msgs[i].UUID
		switch {
		case returned && cc.claimReturn(uuid):
			fail(i, ErrUnroutable)
		case dc.Acked():
		case closed:
			fail(i, closedErr)
		default:
			p.rejected.Add(1)
			fail(i, ErrNacked)
		}
	}
	return failed
}

// reason returns why cc's channel closed, once it has: the error RabbitMQ
// or the connection closed it with, or nil.
func (cc *confirmChannel) reason() *amqp091.Error {
	<-cc.dead // the dispatcher records the reason before it ends
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.closeErr
}

// flushReturns waits until the dispatcher recorded every return it
// received so far, and reports whether any is waiting to be claimed.
func (cc *confirmChannel) flushReturns() bool {
	reply := make(chan struct{})
	select {
	case cc.flush <- reply:
		<-reply
	case <-cc.dead:
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return len(cc.returned) > 0
}

// claimReturn reports whether a return of the message uuid is recorded,
// and removes it.
func (cc *confirmChannel) claimReturn(uuid string) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	n := cc.returned[uuid]
	switch n {
	case 0:
		return false
	case 1:
		delete(cc.returned, uuid)
	default:
		cc.returned[uuid] = n - 1
	}
	return true
}

// take chooses the pool slot for a Publish call and counts the call as its
// user (the caller subtracts it when done): the first slot without users,
// looking round robin from after the last choice, else the one with the
// fewest. Plain round robin let concurrent calls pile onto one channel
// (which serializes their publishes) while another stood idle.
func (p *publisher) take() *poolSlot {
	n := uint64(len(p.pool))
	start := p.next.Add(1)
	best := p.pool[start%n]
	for i := range n {
		slot := p.pool[(start+i)%n]
		u := slot.users.Load()
		if u == 0 {
			best = slot
			break
		}
		if u < best.users.Load() {
			best = slot
		}
	}
	best.users.Add(1)
	return best
}

// channel returns the live channel of slot for a send to dst, opening one
// if needed, and makes sure dst's topology is declared.
func (p *publisher) channel(slot *poolSlot, dst destination) (*confirmChannel, error) {
	conn, gen, err := p.conn.current()
	if err != nil {
		return nil, err
	}
	if err := p.declare(conn, gen, dst); err != nil {
		return nil, downErr(conn, err)
	}
	slot.mu.Lock()
	defer slot.mu.Unlock()
	if cc := slot.ch; cc != nil && cc.gen == gen && !cc.ch.IsClosed() {
		return cc, nil
	}
	if p.closed.Load() {
		return nil, broker.ErrClosed
	}
	if slot.ch != nil {
		_ = slot.ch.ch.Close()
	}
	cc, err := p.open(conn, gen)
	if err != nil {
		return nil, downErr(conn, err)
	}
	slot.ch = cc
	return cc, nil
}

// downErr is err, from a call on conn, marked as [ErrNotConnected] when
// it says the connection dropped: conn is closed, or the call failed on
// the socket (a reset, a broken pipe, EOF) before amqp091 noticed. The
// broker's watcher has not installed the next connection yet, so the
// caller may try again after the reconnect like any other call that finds
// the connection down.
func downErr(conn *amqp091.Connection, err error) error {
	if errors.Is(err, ErrNotConnected) || errors.Is(err, broker.ErrClosed) {
		return err
	}
	var (
		ne net.Error
		ae *amqp091.Error
	)
	if conn.IsClosed() || errors.Is(err, amqp091.ErrClosed) || errors.Is(err, io.EOF) ||
		errors.As(err, &ne) || errors.As(err, &ae) && ae.Code == amqp091.FrameError {
		return fmt.Errorf("%w: %w", ErrNotConnected, err)
	}
	return err
}

// open opens a confirm-mode channel and starts its returns dispatcher.
func (p *publisher) open(conn *amqp091.Connection, gen uint64) (*confirmChannel, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("amqp: open publishing channel: %w", err)
	}
	cc := &confirmChannel{
		ch:       ch,
		gen:      gen,
		slots:    make(chan struct{}, p.window),
		flush:    make(chan chan struct{}),
		dead:     make(chan struct{}),
		returned: make(map[string]int),
	}
	// Unbuffered: see publisher.
	returns := ch.NotifyReturn(make(chan amqp091.Return))
	closes := ch.NotifyClose(make(chan *amqp091.Error, 1))
	p.wg.Add(1)
	go p.dispatchReturns(cc, returns, closes)
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("amqp: confirm mode: %w", err)
	}
	return cc, nil
}

// dispatchReturns records the returns of cc and serves flush requests,
// until the channel closes; then it records why it closed.
func (p *publisher) dispatchReturns(cc *confirmChannel, returns <-chan amqp091.Return, closes <-chan *amqp091.Error) {
	defer p.wg.Done()
	defer close(cc.dead)
	for {
		select {
		case r, ok := <-returns:
			if !ok {
				// amqp091 sends the reason before it closes the notify
				// channels.
				select {
				case e := <-closes:
					cc.mu.Lock()
					cc.closeErr = e
					cc.mu.Unlock()
				default:
				}
				return
			}
			uuid := returnedUUID(r)
			cc.mu.Lock()
			cc.returned[uuid]++
			cc.mu.Unlock()
		case reply := <-cc.flush:
			close(reply)
		}
	}
}

// forget makes the next send to a destination of key declare its
// topology again.
func (p *publisher) forget(key declKey) {
	p.declMu.Lock()
	delete(p.declared, key)
	p.declMu.Unlock()
}

// declare declares dst's topology once per connection.
func (p *publisher) declare(conn *amqp091.Connection, gen uint64, dst destination) error {
	p.declMu.Lock()
	defer p.declMu.Unlock()
	if p.declared[dst.key] == gen {
		return nil
	}
	declare := dst.declare
	if declare == nil {
		declare = func(ch *amqp091.Channel) error {
			if err := declareExchange(ch, dst.key.name); err != nil {
				return fmt.Errorf("declare exchange %s: %w", ExchangeName(dst.key.name), err)
			}
			return nil
		}
	}
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("amqp: declare %s: %w", dst.key.name, err)
	}
	err = declare(ch)
	if cerr := ch.Close(); err == nil && cerr != nil && !errors.Is(cerr, amqp091.ErrClosed) {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("amqp: %w", err)
	}
	p.declared[dst.key] = gen
	return nil
}

// Close fails the messages still waiting for a confirm with
// [ErrChannelClosed] (they may have been stored), closes the pool's channels and makes later Publish
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

// returnedUUID is the UUID of the message r returns, as the marshaler sent
// it: the _watermill_message_uuid header, else (the UUID is the event id)
// the cloudEvents_id header.
func returnedUUID(r amqp091.Return) string {
	if uuid, ok := r.Headers[uuidHeader].(string); ok {
		return uuid
	}
	uuid, _ := r.Headers[idHeader].(string)
	return uuid
}
