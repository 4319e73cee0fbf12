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

// Batch is a group of messages a subscriber handed out together (the
// records one poll returned for a partition, in order). Either each
// message goes through the router on its own, knowing its place in the
// batch ([NewBatch]), or one carrier message goes through the router for
// all of them ([Carry]) and is acked or nacked for all. Its identity is its
// address. It is safe for concurrent use: it is never changed after it was
// made.
type Batch struct {
	size  int
	msgs  []*message.Message
	taken atomic.Bool
}

// NewBatch returns a batch of size messages, each delivered on its own.
func NewBatch(size int) *Batch { return &Batch{size: size} }

// Carry returns a batch of msgs that one carrier message delivers.
func Carry(msgs []*message.Message) *Batch { return &Batch{size: len(msgs), msgs: msgs} }

// Size is the number of messages of the batch.
func (b *Batch) Size() int { return b.size }

// Carried returns the messages a carrier delivers, in order, or nil when
// the batch's messages are delivered on their own.
func (b *Batch) Carried() []*message.Message { return b.msgs }

// Take records that a batch handler took the carried messages. A carrier
// acked without it was acked by a handler that did not know it carried
// records (a plain handler registered with batch delivery): the subscriber
// must not count its records as handled.
func (b *Batch) Take() { b.taken.Store(true) }

// Taken reports whether Take was called.
func (b *Batch) Taken() bool { return b.taken.Load() }

// Member is the place of one message in its batch.
type Member struct {
	Batch *Batch
	// Index is the message's position in the batch, from 0.
	Index int
}

// memberKey is the context key of a *Member.
type memberKey struct{}

// MemberKey is the key under which a context holds a message's *Member. A
// subscriber's message context answers Value(MemberKey) itself (saving a
// context layer per message); others use [WithMember].
var MemberKey any = memberKey{}

// WithMember returns ctx holding m.
func WithMember(ctx context.Context, m *Member) context.Context {
	return context.WithValue(ctx, MemberKey, m)
}

// MemberFromContext returns the batch membership of the message whose
// context is ctx, or nil when it was delivered on its own.
func MemberFromContext(ctx context.Context) *Member {
	m, _ := ctx.Value(MemberKey).(*Member)
	return m
}
