package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"
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
	for _, nw := range b.workers.list {
		if nw.name == name {
			return fmt.Errorf("bus: worker %q is already registered", name)
		}
	}
	b.workers.list = append(b.workers.list, namedWorker{name, w})
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

type namedWorker struct {
	name string
	w    Worker
}

// workers runs the registered workers: each in a goroutine of its own
// that start launches and stop waits for.
type workers struct {
	list []namedWorker // guarded by Bus.mu until Run

	once   sync.Once
	cancel context.CancelFunc
	wg     sync.WaitGroup
	errc   chan error // the first error of a worker, buffered
}

// start launches every worker with a context that only stop cancels.
func (ws *workers) start(ctx context.Context) <-chan error {
	ws.errc = make(chan error, 1)
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	ws.cancel = cancel
	for _, nw := range ws.list {
		ws.wg.Add(1)
		go func() {
			defer ws.wg.Done()
			err := nw.w.Run(wctx)
			if err != nil && wctx.Err() == nil {
				select {
				case ws.errc <- fmt.Errorf("bus: worker %s: %w", nw.name, err):
				default:
				}
			}
		}()
	}
	return ws.errc
}

// stop cancels the workers' context and waits for them until ctx ends.
// It does nothing when start was not called.
func (ws *workers) stop(ctx context.Context) error {
	if ws.cancel == nil {
		return nil
	}
	ws.once.Do(ws.cancel)
	done := make(chan struct{})
	go func() {
		ws.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("bus: workers still running at the end of the shutdown: %w", ctx.Err())
	}
}
