package outbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus"
)

// Inbox returns a [bus.HandlerFunc] that runs h at most once per message
// for group, with its effects and that record in one transaction: it
// begins a transaction, inserts (group, message UUID) into the inbox table
// (INSERT ... ON CONFLICT DO NOTHING), runs h with the transaction in its
// context ([TxFromContext] for h's own writes, [Outbox.Publish] for what
// it publishes) and commits. An error of h, or a failed commit, rolls all
// of it back and is returned as it is (the bus retries or dead-letters the
// message); a message whose row already exists is a duplicate: h is not
// called and the message is acked with no effect.
//
// Two deliveries of one message at the same time serialise on the row:
// the second waits for the first's transaction and then finds the row (a
// duplicate) or, after a rollback, takes it. No lease is involved, so a
// crash at any point leaves either everything or nothing. group names the
// consumer (use the handler's name): two handlers of one message each run
// once. The inbox remembers a message for Config.InboxRetention.
//
// Give a handler wrapped by Inbox no dedup step (the inbox replaces it:
// bus.HandlerStack with middleware.StepDedup in Disable). h must do its
// database work in the transaction, and nothing it cannot undo.
// Inbox panics when group is empty or h is nil.
func (o *Outbox) Inbox(group string, h bus.HandlerFunc) bus.HandlerFunc {
	if group == "" {
		panic("outbox: Inbox: empty group")
	}
	if h == nil {
		panic("outbox: Inbox: nil handler")
	}
	return func(ctx context.Context, msg *message.Message) error {
		tx, err := o.pool.Begin(ctx)
		if err != nil {
			return fmt.Errorf("outbox: inbox %s: begin: %w", group, err)
		}
		// After a commit, Rollback does nothing.
		defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
		tag, err := tx.Exec(ctx, o.inboxSQL, group, msg.UUID)
		if err != nil {
			return fmt.Errorf("outbox: inbox %s: record %s: %w", group, msg.UUID, err)
		}
		if tag.RowsAffected() == 0 {
			if o.cfg.OnDuplicate != nil {
				o.cfg.OnDuplicate(DuplicateInfo{Group: group, MessageID: msg.UUID})
			}
			return nil // a duplicate: the deferred rollback ends the tx
		}
		if err := h(ContextWithTx(ctx, tx), msg); err != nil {
			return err
		}
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("outbox: inbox %s: commit %s: %w", group, msg.UUID, errors.Join(err, ctx.Err()))
		}
		return nil
	}
}
