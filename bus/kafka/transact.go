package kafka

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Kafka transactions: consume-transform-produce (broker.SubscriberOptions.Transactions).
//
// A transactional subscription is a franz-go GroupTransactSession (a group
// consumer and a transactional producer on one client) driven one poll at a
// time:
//
//  1. poll up to MaxInFlight records (read_committed);
//  2. begin a transaction;
//  3. hand the records out through the router, each partition's in offset
//     order, one at a time ("partition" ordering), partitions in parallel;
//     what a handler publishes with its message's context goes into the
//     transaction when the message is acked (see txnMsg and
//     publisher.Publish), dead letters included;
//  4. when every record was acked, End(TryCommit): the consumed offsets
//     (TxnOffsetCommit) and the published records commit atomically; when
//     one was nacked, a publish failed, the group rebalanced meanwhile or the
//     subscription is closing, End(TryAbort): the outputs are discarded, the
//     session rewinds to the committed offsets, and the same records are
//     polled again (a nack came after the stack's nack delay).
//
// Why a loop of its own and not the lanes and tracker of consumer: a
// transaction commits the offsets of everything the session polled (franz-go
// commits UncommittedOffsets in End), so the unit of commit is the poll, not
// the finished prefix of each partition; the commit loop, pauses and revoke
// drains of consumer have nothing to do here. What a handler sees is the
// same code: unmarshalRecord and recordContext (RecordFromContext works).
//
// Why not BlockRebalanceOnPoll: a transaction spans the handlers of a whole
// poll; blocking a rebalance until it ends risks the rebalance timeout with
// slow handlers. Following franz-go's advice, a rebalance during a
// transaction aborts it instead (the session watches revokes and losses),
// and the lanes stop handing out records once a partition of the topic was
// revoked or lost: the work is redone by the partitions' owners.
//
// Fencing: the transactional id is "busline/<group>/<topic>/<instance>/<n>"
// (Config.InstanceID, n the Subscribe call's index on its subscriber). A
// restarted member with the same id fences its predecessor (a zombie's
// later produce or commit fails) and aborts its open transaction at once;
// KIP-447 (generation-checked TxnOffsetCommit) fences zombies across members
// as well.

// txnKey is the context key of the transaction state of a delivered message.
type txnKey struct{}

// txn is the transaction of one poll.
type txn struct {
	sess   *kgo.GroupTransactSession
	failed atomic.Bool // a produce failed: the transaction must abort
}

// txnMsg is a delivered message's share of its poll's transaction: what
// the handler published with the message's context, held back until the
// message is acked.
//
// Why held back and not produced at once: the middleware stack retries a
// failed handler in place, and a Kafka transaction has no savepoint. An
// attempt that published and then failed would leave its outputs in the
// transaction, and the next attempt would publish them again. So a publish
// only marshals the records into the message's buffer; a failed attempt
// drops the buffer (DiscardOutputs, which the bus calls around the
// handler), and the ack hands what the successful attempt, or the dead
// letter, published to the transaction's producer (asynchronously, flushed
// before the transaction ends; a failed produce aborts the transaction).
type txnMsg struct {
	t    *txn
	mu   sync.Mutex
	done bool // acked or nacked: the buffer was produced or dropped
	recs []*kgo.Record
}

// ErrTransactionEnded is returned by a publish with the context of a
// message of a transactional subscription that was already acked or nacked
// (say, from a goroutine its handler left behind).
var ErrTransactionEnded = errors.New("kafka: publish with the context of a message that was already acked or nacked in its transaction")

// txnOf returns the transaction state msgs belong to through their
// contexts, or nil. Messages of one Publish call must all belong to the same
// one (or to none).
func txnOf(msgs []*message.Message) (*txnMsg, error) {
	tm, _ := msgs[0].Context().Value(txnKey{}).(*txnMsg)
	for _, m := range msgs[1:] {
		if u, _ := m.Context().Value(txnKey{}).(*txnMsg); u != tm {
			return nil, errors.New("kafka: messages of one publish belong to different messages' Kafka transactions")
		}
	}
	return tm, nil
}

// buffer is publisher.Publish's produce step inside a transaction: it
// keeps recs until the message is acked.
func (tm *txnMsg) buffer(_ context.Context, recs ...*kgo.Record) kgo.ProduceResults {
	res := make(kgo.ProduceResults, len(recs))
	tm.mu.Lock()
	defer tm.mu.Unlock()
	for i, r := range recs {
		res[i] = kgo.ProduceResult{Record: r}
		if tm.done {
			res[i].Err = ErrTransactionEnded
		}
	}
	if !tm.done {
		tm.recs = append(tm.recs, recs...)
	}
	return res
}

// DiscardOutputs drops what was published with ctx, the context of a
// message a transactional subscription delivered (or one derived from it),
// since the message was handed out or since the last call: the outputs of
// a failed attempt, which must not reach the transaction. Outside such a
// message it does nothing. The bus calls it around every transactional
// handler; a router of its own must do the same.
func (*Broker) DiscardOutputs(ctx context.Context) {
	if tm, _ := ctx.Value(txnKey{}).(*txnMsg); tm != nil {
		tm.mu.Lock()
		if !tm.done {
			tm.recs = nil
		}
		tm.mu.Unlock()
	}
}

// finish ends the message's share: with ack, its buffer goes to the
// transaction's producer; otherwise it is dropped. Later publishes fail.
func (tm *txnMsg) finish(ack bool) {
	tm.mu.Lock()
	recs := tm.recs
	tm.recs, tm.done = nil, true
	tm.mu.Unlock()
	if !ack {
		return
	}
	for _, r := range recs {
		tm.t.sess.Produce(context.Background(), r, func(_ *kgo.Record, err error) {
			if err != nil {
				tm.t.failed.Store(true)
			}
		})
	}
}

// txnConsumer is a transactional subscription: a group member consuming one
// topic, one transaction per poll (see the comment at the top of the file).
type txnConsumer struct {
	b      *Broker
	group  string
	topic  string
	id     string // transactional id
	cfg    consumerConfig
	logger watermill.LoggerAdapter
	out    chan *message.Message
	msgCtx context.Context
	sess   *kgo.GroupTransactSession // owned by the poll loop

	pollCtx   context.Context
	stopPoll  context.CancelFunc
	done      chan struct{} // closed by close: lanes give up
	stopped   chan struct{} // closed when the poll loop returned
	closeOnce sync.Once
	loops     sync.WaitGroup
	inFlight  atomic.Int64
	lost      atomic.Int64

	mu  sync.Mutex
	cur *pollState // the poll being handled, nil between polls
}

// pollState is what the lanes of one poll share.
type pollState struct {
	stop     chan struct{} // closed when the poll's transaction will abort
	stopOnce sync.Once
}

func (p *pollState) abort() { p.stopOnce.Do(func() { close(p.stop) }) }

// transactionalID is the transactional id of the n-th subscription of group
// on topic in this process (see the comment at the top of the file).
func (b *Broker) transactionalID(group, topic string, n int) string {
	return "busline/" + group + "/" + topic + "/" + b.txnInstance + "/" + strconv.Itoa(n)
}

// newTxnConsumer starts a transactional group member consuming topic; n is
// the index of the Subscribe call on its subscriber.
func (b *Broker) newTxnConsumer(ctx context.Context, group, topic string, cfg consumerConfig, n int) (*txnConsumer, error) {
	c := &txnConsumer{
		b:       b,
		group:   group,
		topic:   topic,
		id:      b.transactionalID(group, topic, n),
		cfg:     cfg,
		logger:  b.logger.With(watermill.LogFields{"consumer_group": group, "topic": topic, "transactional": true}),
		out:     make(chan *message.Message),
		msgCtx:  ctx,
		done:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	sess, err := c.newSession()
	if err != nil {
		return nil, err
	}
	c.sess = sess
	c.pollCtx, c.stopPoll = context.WithCancel(context.Background())
	c.loops.Add(2)
	go c.pollLoop()
	go func() {
		defer c.loops.Done()
		select {
		case <-ctx.Done():
			go c.close() // as consumer: close waits for this goroutine
		case <-c.done:
		}
	}()
	return c, nil
}

// newSession makes the franz-go transactional group session: the
// publisher's producer options (acks=all, idempotent, the partitioner) and
// the consumer's group options, plus the transactional id and
// read_committed fetches.
func (c *txnConsumer) newSession() (*kgo.GroupTransactSession, error) {
	b := c.b
	opts, err := b.cfg.kgoOptions()
	if err != nil {
		return nil, err
	}
	// Without AllowIdempotentProduceCancellation (franz-go refuses it
	// with a transactional id): a produce whose answer never comes keeps
	// the transaction open until it comes or the transaction times out,
	// when the brokers abort it. Either way nothing is committed twice.
	opts = append(producerOptions(deliveryTimeout, false), append(opts, b.cfg.PartitionerOptions()...)...)
	opts = append(opts, b.groupOptions(c.group, []string{c.topic}, c.cfg)...)
	opts = append(opts,
		kgo.TransactionalID(c.id),
		kgo.TransactionTimeout(transactionTimeout),
		kgo.OnPartitionsRevoked(c.onRevoked),
		kgo.OnPartitionsLost(c.onLost),
	)
	sess, err := kgo.NewGroupTransactSession(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka: transactional consumer: %w", err)
	}
	return sess, nil
}

// transactionTimeout is how long the brokers let a transaction stay open
// before they abort it (franz-go's and Kafka's default is 40s and 60s): the
// handlers of one poll must finish within it. A member that died with a
// transaction open and does not come back under the same transactional id
// holds its partitions, and read_committed readers of its outputs, for up
// to this long.
const transactionTimeout = 40 * time.Second

// endTimeout bounds a transaction's end (flush, offset commit, EndTxn).
const endTimeout = 30 * time.Second

// pollLoop polls and handles each poll in one transaction; after an aborted
// one it polls the same records again.
func (c *txnConsumer) pollLoop() {
	defer c.loops.Done()
	defer close(c.stopped)
	for c.pollCtx.Err() == nil {
		fs := c.sess.PollRecords(c.pollCtx, int(c.cfg.maxInFlight))
		if fs.IsClientClosed() || c.pollCtx.Err() != nil {
			// Records of this poll were not handed out, and are not
			// committed: the next transaction or owner gets them.
			return
		}
		fs.EachError(func(_ string, p int32, err error) {
			if !errors.Is(err, context.Canceled) {
				c.logger.Error("kafka: fetch", err, watermill.LogFields{"partition": p})
			}
		})
		if fs.NumRecords() == 0 {
			if fs.Err() != nil {
				c.sleep(reconnectRetrySleep)
			}
			continue
		}
		_, err := c.transact(fs)
		if err != nil {
			// The session failed (fenced by a member with the same
			// transactional id, a transaction timed out, retries
			// exhausted): start over on a new one, from the committed
			// offsets.
			c.logger.Error("kafka: transaction failed; rejoining with a new session", err, nil)
			c.sess.Close()
			for {
				sess, err := c.newSession()
				if err == nil {
					c.sess = sess
					break
				}
				c.logger.Error("kafka: transactional consumer", err, nil)
				if !c.sleep(reconnectRetrySleep) {
					return
				}
			}
			continue
		}
	}
}

// sleep waits d or until polling stops, and reports whether it may go on.
func (c *txnConsumer) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.pollCtx.Done():
		return false
	}
}

// transact handles the records of one poll in one transaction and ends it:
// committed when every record was acked and the commit went through. err is
// a failure of the session itself.
func (c *txnConsumer) transact(fs kgo.Fetches) (committed bool, err error) {
	if err := c.sess.Begin(); err != nil {
		return false, err
	}
	t := &txn{sess: c.sess}
	ps := &pollState{stop: make(chan struct{})}
	c.mu.Lock()
	c.cur = ps
	c.mu.Unlock()
	if c.pollCtx.Err() != nil {
		ps.abort() // stopFetching came between the poll and c.cur
	}

	n := fs.NumRecords()
	c.inFlight.Add(int64(n))
	var lanes sync.WaitGroup
	fs.EachPartition(func(ftp kgo.FetchTopicPartition) {
		if len(ftp.Records) == 0 {
			return
		}
		lanes.Go(func() {
			if !c.runLane(t, ps, ftp.Records) {
				ps.abort()
			}
		})
	})
	lanes.Wait()
	c.mu.Lock()
	c.cur = nil
	c.mu.Unlock()
	c.inFlight.Add(-int64(n))

	aborted := false
	select {
	case <-ps.stop:
		aborted = true
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), endTimeout)
	defer cancel()
	if !aborted {
		// Wait for every output's produce: one that failed aborts.
		if err := c.sess.Client().Flush(ctx); err != nil {
			return false, err
		}
	}
	commit := !aborted && !t.failed.Load()
	committed, err = c.sess.End(ctx, kgo.TransactionEndTry(commit))
	if err != nil {
		return false, err
	}
	if commit && !committed {
		c.logger.Info("kafka: transaction aborted (the group rebalanced); its records will be handled again", nil)
	}
	return committed, nil
}

// runLane hands out recs (one partition's records of the poll) one at a time
// and waits for each ack. It returns false when one was nacked, or the poll
// was aborted or the subscription closed before all were acked.
func (c *txnConsumer) runLane(t *txn, ps *pollState, recs []*kgo.Record) bool {
	for _, rec := range recs {
		select {
		case <-ps.stop:
			return false
		default:
		}
		msg := unmarshalRecord(rec)
		ctx, cancel := context.WithCancel(c.msgCtx)
		tm := &txnMsg{t: t}
		msg.SetContext(&recordContext{
			Context: ctx,
			info:    RecordInfo{Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset, Timestamp: rec.Timestamp},
			txn:     tm,
		})
		select {
		case c.out <- msg:
		case <-ps.stop:
			cancel()
			return false
		case <-c.done:
			cancel()
			return false
		}
		// Once handed out, wait for the outcome even when the poll
		// aborts meanwhile: produce only between Begin and End.
		select {
		case <-msg.Acked():
			tm.finish(true)
			cancel()
		case <-msg.Nacked():
			tm.finish(false)
			cancel()
			return false
		case <-c.done:
			tm.finish(false)
			cancel()
			return false
		}
	}
	return true
}

// onRevoked and onLost stop the lanes of the poll in flight when the topic
// lost a partition: its transaction will abort (the session sees the same
// callbacks), so further handling would be wasted. A cooperative rebalance
// that revokes nothing of this topic leaves the poll alone.
func (c *txnConsumer) onRevoked(_ context.Context, _ *kgo.Client, revoked map[string][]int32) {
	if len(revoked[c.topic]) == 0 {
		return
	}
	c.abortPoll()
}

func (c *txnConsumer) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	if n := len(lost[c.topic]); n > 0 {
		c.lost.Add(int64(n))
		c.abortPoll()
	}
}

func (c *txnConsumer) abortPoll() {
	c.mu.Lock()
	ps := c.cur
	c.mu.Unlock()
	if ps != nil {
		ps.abort()
	}
}

// stopFetching stops polling and aborts the poll in flight: its lanes hand
// out no more records, the handlers running finish, and the transaction is
// aborted (see drain); the group's next consumer handles the poll again.
//
// Why abort rather than finish the poll: the bus refuses publishes once its
// Close began (bus.ErrClosed), so handlers that ran during the drain would
// fail to publish their outputs and have their records dead-lettered, and
// the transaction would commit those dead letters. An aborted poll costs at
// most MaxInFlight records handled again, whose Kafka outputs are then
// committed once.
func (c *txnConsumer) stopFetching() {
	c.stopPoll()
	c.abortPoll()
}

// drain waits until the handlers of the poll in flight returned and its
// transaction was aborted, or ctx is done.
func (c *txnConsumer) drain(ctx context.Context) error {
	select {
	case <-c.stopped:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// close stops polling, aborts the poll in flight unless its handlers are
// done, leaves the group and closes the channel. It is idempotent.
func (c *txnConsumer) close() {
	c.closeOnce.Do(func() {
		c.stopPoll()
		close(c.done)
		c.loops.Wait()
		c.sess.Close()
		close(c.out)
	})
}

func (c *txnConsumer) stats() ConsumerStats {
	return ConsumerStats{Group: c.group, Topic: c.topic, InFlight: int(c.inFlight.Load()), LostPartitions: c.lost.Load()}
}

// member is a subscription of a subscriber: a consumer or a txnConsumer.
type member interface {
	stopFetching()
	drain(ctx context.Context) error
	close()
	stats() ConsumerStats
}

var (
	_ member = (*consumer)(nil)
	_ member = (*txnConsumer)(nil)
)
