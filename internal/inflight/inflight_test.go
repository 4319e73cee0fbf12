package inflight_test

import (
	"context"
	"errors"
	"testing"

	"github.com/busline/busline/internal/inflight"
)

func TestWait(t *testing.T) {
	var tr inflight.Tracker
	if err := tr.Wait(context.Background()); err != nil {
		t.Fatalf("Wait with nothing in flight: %v", err)
	}
	tr.Add()
	tr.Add()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := tr.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait with a cancelled ctx = %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- tr.Wait(context.Background()) }()
	tr.Done()
	select {
	case err := <-done:
		t.Fatalf("Wait returned %v with one still in flight", err)
	default:
	}
	if n := tr.Count(); n != 1 {
		t.Fatalf("Count = %d, want 1", n)
	}
	tr.Done()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
