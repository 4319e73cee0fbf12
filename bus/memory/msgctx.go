package memory

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// msgCtx is the context of one delivery: the subscription's context,
// cancelled in addition when the delivery ends (ack, nack, or the
// subscription's end), like context.WithCancel's. It is lazy: until someone
// asks for Done it registers nothing with the subscription's context and
// holds no channel, so a delivery whose handler never waits on its context
// costs one allocation instead of a cancel context, its entry in the
// parent's children and the parent's lock twice. Err answers without
// arming.
//
// Done arms it by deriving a real context.WithCancel child, which Value then
// answers through: the context package recognises that child as the nearest
// cancel context of anything derived from this one (its Done channel is the
// one Done returns), so derived contexts register as its children instead of
// starting a goroutine each.
type msgCtx struct {
	parent context.Context
	inner  atomic.Pointer[context.Context] // the armed child, once Done was asked for

	mu          sync.Mutex
	err         error // set once the delivery ended before arming
	cancelInner context.CancelFunc
}

func newMsgCtx(parent context.Context) *msgCtx { return &msgCtx{parent: parent} }

// Deadline is the parent's.
func (c *msgCtx) Deadline() (time.Time, bool) { return c.parent.Deadline() }

// Value answers through the armed child when there is one, else the parent.
func (c *msgCtx) Value(key any) any {
	if in := c.inner.Load(); in != nil {
		return (*in).Value(key)
	}
	return c.parent.Value(key)
}

// Done returns a channel closed when the delivery ends or the parent is
// done. The first call derives a cancel context from the parent.
func (c *msgCtx) Done() <-chan struct{} {
	if in := c.inner.Load(); in != nil {
		return (*in).Done()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if in := c.inner.Load(); in != nil {
		return (*in).Done()
	}
	in, cancel := context.WithCancel(c.parent)
	c.cancelInner = cancel
	if c.err != nil {
		cancel()
	}
	c.inner.Store(&in)
	return in.Done()
}

// Err returns nil while the delivery runs under a live parent, then why
// it ended.
func (c *msgCtx) Err() error {
	if in := c.inner.Load(); in != nil {
		return (*in).Err()
	}
	c.mu.Lock()
	err := c.err
	c.mu.Unlock()
	if err != nil {
		return err
	}
	return c.parent.Err()
}

// cancel ends the delivery's context.
func (c *msgCtx) cancel() {
	c.mu.Lock()
	if c.err == nil {
		if c.err = c.parent.Err(); c.err == nil {
			c.err = context.Canceled
		}
	}
	cancel := c.cancelInner
	c.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// String describes the context like the context package does.
func (c *msgCtx) String() string { return "memory.deliveryContext" }
