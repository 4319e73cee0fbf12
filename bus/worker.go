package bus

import (
	"context"
	"errors"
	"fmt"
)

// Worker is a long-running task that the bus runs beside its handlers and
// stops with them, such as the outbox relay of bus/outbox. Run must
// return soon after ctx is cancelled; it returns nil then. A non-nil
// error before that shuts the bus down, and [Bus.Run] returns it. Run is
// called once, from its own goroutine, which the bus waits for.
type Worker interface {
	Run(ctx context.Context) error
}

// WorkerFunc adapts a function to [Worker].
type WorkerFunc func(ctx context.Context) error

// Run calls f(ctx).
func (f WorkerFunc) Run(ctx context.Context) error { return f(ctx) }

// AddWorker registers w to run while the bus runs: [Bus.Run] starts it
// (after the handlers' subscriptions are set up) and [Bus.Close] cancels
// its context as the first step of the shutdown and waits for it to
// return (within Close's ctx) before it closes the publisher, so a worker
// may publish through the bus until its context ends. name identifies it in
// errors and must be unique. AddWorker must be called before Run.
func (b *Bus) AddWorker(name string, w Worker) error {
	if name == "" || w == nil {
		return errors.New("bus: worker name must not be empty and the worker not nil")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.registrable(); err != nil {
		return err
	}
	if err := b.workers.Add(name, w.Run); err != nil {
		return fmt.Errorf("bus: %w", err)
	}
	return nil
}

// registrable returns ErrRunning or ErrClosed when handlers and workers
// can no longer be registered; b.mu must be held.
func (b *Bus) registrable() error {
	switch b.state {
	case stateRunning:
		return ErrRunning
	case stateClosing:
		return ErrClosed
	}
	return nil
}
