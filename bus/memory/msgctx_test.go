package memory

import (
	"context"
	"errors"
	"testing"
	"time"
)

type key struct{}

func TestMsgCtx(t *testing.T) {
	parent, cancelParent := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
	defer cancelParent()

	// Not armed: Err and Value answer, cancel ends it, a later Done is closed.
	c := newMsgCtx(parent)
	if c.Err() != nil || c.Value(key{}) != "v" {
		t.Fatalf("fresh: Err %v, Value %v", c.Err(), c.Value(key{}))
	}
	c.cancel()
	if !errors.Is(c.Err(), context.Canceled) {
		t.Fatalf("after cancel: Err %v", c.Err())
	}
	select {
	case <-c.Done():
	default:
		t.Fatal("Done not closed after cancel")
	}

	// Armed: a derived context is cancelled with it, without waiting on the parent.
	c = newMsgCtx(parent)
	derived, stop := context.WithCancel(c)
	defer stop()
	c.cancel()
	select {
	case <-derived.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("derived context not cancelled")
	}

	// The parent's end ends it, armed or not.
	c1, c2 := newMsgCtx(parent), newMsgCtx(parent)
	done := c2.Done()
	cancelParent()
	if !errors.Is(c1.Err(), context.Canceled) {
		t.Fatalf("parent done, unarmed: Err %v", c1.Err())
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("parent done, armed: Done not closed")
	}
	if !errors.Is(c2.Err(), context.Canceled) {
		t.Fatalf("parent done, armed: Err %v", c2.Err())
	}
}
