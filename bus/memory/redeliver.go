package memory

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus/broker"
	"github.com/busline/busline/middleware"
)

// ErrTooManyDelayed is returned by a redeliverer's Redeliver when its
// queue already holds Config.Buffer delayed messages. It wraps
// middleware.ErrTierFull: the message is dead-lettered then (reason
// redelivery_full), with its budget so far, rather than handled again.
var ErrTooManyDelayed = fmt.Errorf("memory: too many delayed messages: %w", middleware.ErrTierFull)

// Redeliverer returns the delayed-redelivery tier of the queue of group on
// topic: Redeliver keeps a copy of a message on a timer and puts it back
// into that queue only (not into other groups' queues) when its delay is
// over. Delayed messages count in [Broker.Depth]; at most Config.Buffer wait
// per queue. They live in memory: a crash or [Broker.Close] drops them (Close
// stops their timers), as it drops every in-process queue.
func (b *Broker) Redeliverer(topic, group string, delays []time.Duration) (interface {
	Redeliver(ctx context.Context, msg *message.Message, delay time.Duration) error
}, error) {
	if err := broker.ValidateDelays(delays); err != nil {
		return nil, fmt.Errorf("memory: %w", err)
	}
	if b.closed.Load() {
		return nil, broker.ErrClosed
	}
	return &redeliverer{b: b, q: b.queue(topic, group), delays: slices.Clone(delays)}, nil
}

type redeliverer struct {
	b      *Broker
	q      *queue
	delays []time.Duration
}

// Redeliver puts a copy of msg back into the queue after delay.
func (r *redeliverer) Redeliver(_ context.Context, msg *message.Message, delay time.Duration) error {
	if !slices.Contains(r.delays, delay) {
		return fmt.Errorf("memory: redeliver: %v is not one of the delays %v", delay, r.delays)
	}
	if r.b.closed.Load() {
		return broker.ErrClosed
	}
	if int(r.q.delayed.Add(1)) > r.b.cfg.Buffer {
		r.q.delayed.Add(-1)
		return ErrTooManyDelayed
	}
	c := msg.Copy()
	c.SetContext(context.Background())
	b := r.b
	b.timersMu.Lock()
	defer b.timersMu.Unlock()
	if b.timers == nil {
		b.timers = make(map[*time.Timer]struct{})
	}
	var t *time.Timer
	t = time.AfterFunc(delay, func() {
		defer r.q.delayed.Add(-1)
		b.timersMu.Lock()
		delete(b.timers, t)
		b.timersMu.Unlock()
		select {
		case r.q.ch <- c:
		case <-b.closing:
		}
	})
	b.timers[t] = struct{}{}
	return nil
}

// stopTimers stops the timers of delayed messages, for Close.
func (b *Broker) stopTimers() {
	b.timersMu.Lock()
	defer b.timersMu.Unlock()
	for t := range b.timers {
		t.Stop()
	}
	clear(b.timers)
}
