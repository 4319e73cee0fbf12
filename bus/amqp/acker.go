package amqp

import (
	"sync"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// acker settles the deliveries of one consuming channel, coalescing acks:
// the acks of a run of settled deliveries (by delivery tag) go out as one
// multiple ack. Nacks go out at once, one by one, under the same lock, so a
// multiple ack never covers a delivery that was nacked after it was sent.
//
// Acks are held back until a quarter of the prefetch (maxHeld) is waiting,
// or for ackHoldBack at most; a goroutine of the subscription (flushLoop)
// then sends them: one multiple ack for the run from the lowest tag, and
// one ack each for deliveries settled while one before them is still in a
// handler (with Concurrency above 1 handlers finish out of order), so a
// slow handler does not hold back the acks of the messages after it (they
// count against the prefetch, and the subscription would stall). Acking
// every delivery as it settled cost a frame, a write and RabbitMQ's work
// on it per message: about a sixth of the consuming throughput (see
// docs/benchmarks.md). The price is that a consumer that dies loses up to
// ackHoldBack of acks, and those messages are delivered again: at least
// once, as always.
type acker struct {
	ch   *amqp091.Channel
	kick chan struct{} // capacity 1: an ack is waiting
	// maxHeld is the number of held-back acks that are sent at once.
	maxHeld int

	mu      sync.Mutex
	low     uint64          // every tag below low is settled on the wire
	settled map[uint64]bool // settled tags >= low; true: ack not yet sent
	held    int             // acks in settled not yet sent
}

// ackHoldBack is how long an ack waits at most for others to go out with.
const ackHoldBack = 2 * time.Millisecond

// newAcker returns the acker of ch, a channel with the given prefetch.
func newAcker(ch *amqp091.Channel, prefetch int) *acker {
	return &acker{ch: ch, kick: make(chan struct{}, 1), maxHeld: max(1, prefetch/4), low: 1, settled: make(map[uint64]bool)}
}

// ack records that tag may be acked; flush sends it.
func (a *acker) ack(tag uint64) {
	a.mu.Lock()
	a.settled[tag] = true
	a.held++
	kick := a.held == 1 || a.held >= a.maxHeld // start the clock, or due
	a.mu.Unlock()
	if kick {
		select {
		case a.kick <- struct{}{}:
		default:
		}
	}
}

// nack requeues tag at once.
func (a *acker) nack(tag uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.settled[tag] = false
	return a.ch.Nack(tag, false, true)
}

// flush sends one multiple ack for the settled run from low, if it holds
// any ack, and a single ack for each other settled delivery.
func (a *acker) flush() error {
	_, err := a.flushRun(true)
	return err
}

// flushRun sends what is due: with all, or when maxHeld acks wait, one
// multiple ack for the settled run from low, if it holds any ack, and then
// a single ack for each other settled delivery, if all is set or maxHeld
// of them still wait. held reports whether acks remain unsent.
func (a *acker) flushRun(all bool) (held bool, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !all && a.held < a.maxHeld {
		return a.held > 0, nil
	}
	var upTo uint64
	for {
		pending, ok := a.settled[a.low]
		if !ok {
			break
		}
		if pending {
			upTo = a.low
			a.held--
		}
		delete(a.settled, a.low)
		a.low++
	}
	if upTo != 0 {
		if err := a.ch.Ack(upTo, true); err != nil {
			return a.held > 0, err
		}
	}
	if a.held == 0 || !all && a.held < a.maxHeld {
		return a.held > 0, nil
	}
	for tag, pending := range a.settled {
		if pending {
			if err := a.ch.Ack(tag, false); err != nil {
				return a.held > 0, err
			}
			a.settled[tag] = false
			a.held--
		}
	}
	return false, nil
}
