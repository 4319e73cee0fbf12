package bus_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus"
)

// A worker runs while Run runs, may publish until its context ends, and
// ends before Close returns; names are unique and registration closes
// with Run.
func TestWorkerOwnedByRunAndClose(t *testing.T) {
	b, err := bus.New(bus.Config{})
	if err != nil {
		t.Fatal(err)
	}
	started, ended := make(chan struct{}), make(chan struct{})
	err = b.AddWorker("w", bus.WorkerFunc(func(ctx context.Context) error {
		defer close(ended)
		close(started)
		<-ctx.Done()
		// The publisher is still open while the worker winds down.
		return b.Publish(context.Background(), "after", message.NewMessage("late", nil))
	}))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.AddWorker("w", bus.WorkerFunc(func(context.Context) error { return nil })); err == nil {
		t.Error("a second worker named w was accepted")
	}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- b.Run(ctx) }()
	<-started
	if err := b.AddWorker("x", bus.WorkerFunc(func(context.Context) error { return nil })); !errors.Is(err, bus.ErrRunning) {
		t.Errorf("AddWorker while running = %v, want ErrRunning", err)
	}
	cancel()
	if err := <-runErr; err != nil && !errors.Is(err, bus.ErrClosed) {
		t.Fatalf("Run = %v", err)
	}
	select {
	case <-ended:
	default:
		t.Fatal("Run returned before the worker ended")
	}
}

// A worker that fails shuts the bus down, and Run returns its error.
func TestWorkerErrorStopsRun(t *testing.T) {
	b, err := bus.New(bus.Config{})
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if err := b.AddWorker("failing", bus.WorkerFunc(func(context.Context) error { return boom })); err != nil {
		t.Fatal(err)
	}
	err = b.Run(context.Background())
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "bus: worker failing") {
		t.Fatalf("Run = %v, want the worker's error", err)
	}
	if err := b.Publish(context.Background(), "t", message.NewMessage("m", nil)); !errors.Is(err, bus.ErrClosed) {
		t.Errorf("Publish after the worker failed = %v, want ErrClosed", err)
	}
}
