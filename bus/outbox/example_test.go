package outbox_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/outbox"
	"github.com/busline/busline/middleware"
)

// An order and its event commit together through the outbox; the
// invoicing handler writes its invoice through the inbox, so the event
// delivered a second time (as after a crash before the ack) is acked with
// no effect. It needs the local PostgreSQL (BUSLINE_TEST_POSTGRES_DSN).
func Example() {
	ctx := context.Background()
	dsn := os.Getenv("BUSLINE_TEST_POSTGRES_DSN")
	if dsn == "" {
		dsn = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	orders, invoices := "example_orders_"+hex.EncodeToString(suffix[:]), "example_invoices_"+hex.EncodeToString(suffix[:])
	cfg := outbox.Config{Table: "example_outbox_" + hex.EncodeToString(suffix[:]), InboxTable: "example_inbox_" + hex.EncodeToString(suffix[:])}
	defer func() {
		_, _ = pool.Exec(ctx, "DROP TABLE IF EXISTS "+orders+", "+invoices+", "+cfg.Table+", "+cfg.InboxTable)
	}()

	b, err := bus.New(bus.Config{})
	if err != nil {
		fmt.Println(err)
		return
	}
	ob, err := outbox.New(b, pool, cfg) // the relay runs with b.Run
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := ob.Migrate(ctx); err != nil {
		fmt.Println(err)
		return
	}
	_, _ = pool.Exec(ctx, "CREATE TABLE "+orders+" (id text PRIMARY KEY)")
	_, _ = pool.Exec(ctx, "CREATE TABLE "+invoices+" (order_id text NOT NULL)")

	handled := make(chan string)
	invoicing := ob.Inbox("invoicing", func(ctx context.Context, msg *message.Message) error {
		tx := outbox.TxFromContext(ctx) // the inbox's transaction
		_, err := tx.Exec(ctx, "INSERT INTO "+invoices+" (order_id) VALUES ($1)", string(msg.Payload))
		return err
	})
	err = b.Handle("invoicing", "orders", func(ctx context.Context, msg *message.Message) error {
		err := invoicing(ctx, msg)
		handled <- msg.UUID
		return err
	}, bus.HandlerStack(func(c *middleware.StackConfig) { c.Disable |= middleware.StepDedup }))
	if err != nil {
		fmt.Println(err)
		return
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- b.Run(runCtx) }()
	defer func() { stop(); <-done }()

	// The order and its event, in one transaction.
	tx, err := pool.Begin(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	_, _ = tx.Exec(ctx, "INSERT INTO "+orders+" (id) VALUES ('o-1')")
	if err := ob.PublishTx(ctx, tx, "orders", message.NewMessage("evt-1", []byte("o-1"))); err != nil {
		fmt.Println(err)
		return
	}
	if err := tx.Commit(ctx); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("handled", <-handled)

	// The broker delivers the event again.
	if err := b.Publish(ctx, "orders", message.NewMessage("evt-1", []byte("o-1"))); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("handled", <-handled)

	var n int
	_ = pool.QueryRow(ctx, "SELECT count(*) FROM "+invoices+" WHERE order_id = 'o-1'").Scan(&n)
	fmt.Println("invoices for o-1:", n)
	// Output:
	// handled evt-1
	// handled evt-1
	// invoices for o-1: 1
}
