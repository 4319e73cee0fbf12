// Package workers runs named long-running tasks beside a bus's handlers:
// each in a goroutine of its own that Start launches and Stop waits for.
package workers

import (
	"context"
	"fmt"
	"slices"
	"sync"
)

// Group is a set of named tasks, run together. Add is called before
// Start; Start, Cancel and Stop may be called from any goroutine.
type Group struct {
	names []string
	runs  []func(context.Context) error

	once   sync.Once
	mu     sync.Mutex
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Add registers run as the task name. Names are unique.
func (g *Group) Add(name string, run func(context.Context) error) error {
	if slices.Contains(g.names, name) {
		return fmt.Errorf("worker %q is already registered", name)
	}
	g.names = append(g.names, name)
	g.runs = append(g.runs, run)
	return nil
}

// Start launches every task with a context that only Cancel and Stop
// cancel, not ctx's end. The returned channel receives the first error a
// task returned before its context was cancelled.
func (g *Group) Start(ctx context.Context) <-chan error {
	errc := make(chan error, 1)
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	g.mu.Lock()
	g.cancel = cancel
	g.mu.Unlock()
	for i, run := range g.runs {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			err := run(wctx)
			if err != nil && wctx.Err() == nil {
				select {
				case errc <- fmt.Errorf("worker %s: %w", g.names[i], err):
				default:
				}
			}
		}()
	}
	return errc
}

// Cancel cancels the tasks' context. It does nothing before Start.
func (g *Group) Cancel() {
	g.mu.Lock()
	cancel := g.cancel
	g.mu.Unlock()
	if cancel != nil {
		g.once.Do(cancel)
	}
}

// Stop cancels the tasks' context and waits for them until ctx ends. It
// does nothing before Start.
func (g *Group) Stop(ctx context.Context) error {
	g.Cancel()
	done := make(chan struct{})
	go func() {
		g.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("workers still running at the end of the shutdown: %w", ctx.Err())
	}
}
