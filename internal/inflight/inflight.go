// Package inflight counts work in flight and lets callers wait until none
// is left, bounded by a context: the drain step of a graceful shutdown.
package inflight

import (
	"context"
	"sync"
)

// Tracker counts messages in flight. The zero value is ready to use and it
// is safe for concurrent use.
type Tracker struct {
	mu      sync.Mutex
	n       int
	waiters []chan struct{}
}

// Add counts one more in flight.
func (t *Tracker) Add() {
	t.mu.Lock()
	t.n++
	t.mu.Unlock()
}

// Done counts one fewer in flight, waking the waiters at zero.
func (t *Tracker) Done() {
	t.mu.Lock()
	t.n--
	if t.n == 0 {
		for _, w := range t.waiters {
			close(w)
		}
		t.waiters = nil
	}
	t.mu.Unlock()
}

// Count returns how many are in flight.
func (t *Tracker) Count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n
}

// Wait returns nil once nothing is in flight, or ctx's error when ctx ends
// first.
func (t *Tracker) Wait(ctx context.Context) error {
	t.mu.Lock()
	if t.n == 0 {
		t.mu.Unlock()
		return nil
	}
	w := make(chan struct{})
	t.waiters = append(t.waiters, w)
	t.mu.Unlock()
	select {
	case <-w:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
