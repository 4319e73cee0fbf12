// Package delivery holds what a broker's subscriber and a handler adapter
// share about how messages are handed out: the batch a message was
// delivered in. It is internal: users see it through handlers.Batch and the
// bus's handler options.
package delivery

import (
	"context"
	"sync/atomic"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Batch is a group of messages a subscriber hands out together: one
// carrier message goes through the router for all of them ([Carry]) and is
// acked or nacked for all. [Alone] marks a message split from a failed
// batch, which goes through the router on its own. It is safe for
// concurrent use.
type Batch struct {
	size  int
	msgs  []*message.Message
	taken atomic.Bool
}

// Alone is the batch of a message split from a failed batch: a batch
// handler handles it on its own, at once, without waiting for others.
var Alone = &Batch{size: 1}

// Carry returns a batch of msgs that one carrier message delivers.
func Carry(msgs []*message.Message) *Batch { return &Batch{size: len(msgs), msgs: msgs} }

// Size is the number of messages of the batch.
func (b *Batch) Size() int { return b.size }

// Carried returns the messages a carrier delivers, in order, or nil for
// [Alone].
func (b *Batch) Carried() []*message.Message { return b.msgs }

// Take records that a batch handler took the carried messages. A carrier
// acked without it was acked by a handler that did not know it carried
// records (a plain handler registered with batch delivery): the subscriber
// must not count its records as handled.
func (b *Batch) Take() { b.taken.Store(true) }

// Taken reports whether Take was called.
func (b *Batch) Taken() bool { return b.taken.Load() }

// Member says which batch a delivered message stands for.
type Member struct {
	Batch *Batch
}

// memberKey is the context key of a *Member.
type memberKey struct{}

// MemberKey is the key under which a context holds a message's *Member:
// the subscriber's message context answers Value(MemberKey) itself (saving
// a context layer per message).
var MemberKey any = memberKey{}

// MemberFromContext returns the batch membership of the message whose
// context is ctx, or nil when it was delivered on its own.
func MemberFromContext(ctx context.Context) *Member {
	m, _ := ctx.Value(MemberKey).(*Member)
	return m
}
