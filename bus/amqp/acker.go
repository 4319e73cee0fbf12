package amqp

import (
	"sync"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// acker settles the deliveries of one consuming channel, coalescing acks:
// the acks of a run of settled deliveries (by delivery tag) go out as one
// multiple ack. A goroutine of the subscription (flushLoop) sends them, so
// acks that arrive while it writes go out together: under load, one
// write per run of acks instead of one per message. Nacks go out at once,
// one by one, under the same lock, so a multiple ack never covers a
// delivery that was nacked after it was sent.
type acker struct {
	ch   *amqp091.Channel
	kick chan struct{} // capacity 1: an ack is waiting

	mu      sync.Mutex
	low     uint64          // every tag below low is settled on the wire
	settled map[uint64]bool // settled tags >= low; true: ack not yet sent
}

func newAcker(ch *amqp091.Channel) *acker {
	return &acker{ch: ch, kick: make(chan struct{}, 1), low: 1, settled: make(map[uint64]bool)}
}

// ack records that tag may be acked; flush sends it.
func (a *acker) ack(tag uint64) {
	a.mu.Lock()
	a.settled[tag] = true
	a.mu.Unlock()
	select {
	case a.kick <- struct{}{}:
	default:
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
// any ack, and a single ack for each other settled delivery: a slow
// handler must not hold back the acks of the messages after it (they
// count against the prefetch, and the subscription would stall).
func (a *acker) flush() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var upTo uint64
	for {
		pending, ok := a.settled[a.low]
		if !ok {
			break
		}
		if pending {
			upTo = a.low
		}
		delete(a.settled, a.low)
		a.low++
	}
	if upTo != 0 {
		if err := a.ch.Ack(upTo, true); err != nil {
			return err
		}
	}
	for tag, pending := range a.settled {
		if pending {
			if err := a.ch.Ack(tag, false); err != nil {
				return err
			}
			a.settled[tag] = false
		}
	}
	return nil
}
