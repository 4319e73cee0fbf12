package handlers_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/handlers"
	"github.com/busline/busline/internal/ordertest"
	"github.com/busline/busline/middleware"
	"github.com/busline/busline/schema"
)

// batchLog records each batch the function saw, as order ids.
type batchLog struct {
	mu      sync.Mutex
	batches [][]string
}

func (l *batchLog) fn(err func([]handlers.Item[ordertest.V3]) error) func(context.Context, []handlers.Item[ordertest.V3]) error {
	return func(_ context.Context, b []handlers.Item[ordertest.V3]) error {
		ids := make([]string, len(b))
		for i, it := range b {
			ids[i] = it.Event.OrderID
			if it.Envelope.ID == "" || it.Envelope.DataVersion != 1 {
				return fmt.Errorf("item %d envelope %+v", i, it.Envelope)
			}
		}
		l.mu.Lock()
		l.batches = append(l.batches, ids)
		l.mu.Unlock()
		if err != nil {
			return err(b)
		}
		return nil
	}
}

// handleAll calls Handle for each message on a goroutine of its own, as a
// source with several messages in flight would, and returns the results.
func handleAll(ctx context.Context, b *handlers.Batcher[ordertest.V3], msgs []*message.Message) []error {
	errs := make([]error, len(msgs))
	var wg sync.WaitGroup
	for i, m := range msgs {
		wg.Go(func() { errs[i] = b.Handle(ctx, m) })
	}
	wg.Wait()
	return errs
}

func messages(t *testing.T, n int) []*message.Message {
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = v1Message(t, fmt.Sprintf("o-%d", i), float64(i))
	}
	return msgs
}

// A batch that reaches Size runs at once, without waiting MaxWait; every
// message of it gets nil.
func TestBatchFlushesWhenFull(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var log batchLog
		b := handlers.Batch(consumerRegistry(t), handlers.BatchConfig{Size: 3, MaxWait: time.Hour}, log.fn(nil))
		start := time.Now()
		errs := handleAll(t.Context(), b, messages(t, 3))
		if d := time.Since(start); d != 0 {
			t.Errorf("full batch waited %v", d)
		}
		for i, err := range errs {
			if err != nil {
				t.Errorf("message %d: %v", i, err)
			}
		}
		if len(log.batches) != 1 || len(log.batches[0]) != 3 {
			t.Fatalf("batches %v", log.batches)
		}
		got := slices.Sorted(slices.Values(log.batches[0]))
		if !slices.Equal(got, []string{"o-0", "o-1", "o-2"}) {
			t.Fatalf("batch %v", got)
		}
	})
}

// A batch that does not fill up runs MaxWait after its first message
// arrived, with what it has; more messages than Size make several batches,
// none larger than Size.
func TestBatchFlushesAfterMaxWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var log batchLog
		b := handlers.Batch(consumerRegistry(t), handlers.BatchConfig{Size: 4, MaxWait: 50 * time.Millisecond}, log.fn(nil))
		start := time.Now()
		errs := handleAll(t.Context(), b, messages(t, 6))
		if d := time.Since(start); d != 50*time.Millisecond {
			t.Errorf("took %v, want MaxWait", d)
		}
		for i, err := range errs {
			if err != nil {
				t.Errorf("message %d: %v", i, err)
			}
		}
		var sizes []int
		for _, bt := range log.batches {
			sizes = append(sizes, len(bt))
		}
		slices.Sort(sizes)
		if !slices.Equal(sizes, []int{2, 4}) {
			t.Fatalf("batch sizes %v, want 4 at once and 2 after MaxWait", sizes)
		}
	})
}

// A failing batch fails every message in it, and only those; a message that
// cannot be decoded fails alone with its schema error.
func TestBatchFailureFailsEveryMessageOfTheBatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		boom := errors.New("boom")
		var log batchLog
		b := handlers.Batch(consumerRegistry(t), handlers.BatchConfig{Size: 2, MaxWait: time.Second},
			log.fn(func(items []handlers.Item[ordertest.V3]) error {
				for _, it := range items {
					if it.Event.OrderID == "o-1" {
						return boom
					}
				}
				return nil
			}))
		msgs := messages(t, 2)
		poison := v1Message(t, "o-9", 1)
		poison.Metadata[schema.KeyDataVersion] = "4"
		errs := handleAll(t.Context(), b, append(msgs, poison))
		if !errors.Is(errs[2], schema.ErrUnknownVersion) {
			t.Errorf("poison message: %v", errs[2])
		}
		for i := range 2 {
			if !errors.Is(errs[i], boom) {
				t.Errorf("message %d: %v, want the batch's error", i, errs[i])
			}
		}
		if len(log.batches) != 1 {
			t.Fatalf("batches %v", log.batches)
		}
	})
}

// A waiting message whose context ends leaves its batch and is nacked; the
// batch runs without it.
func TestBatchWaiterCancelled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var log batchLog
		b := handlers.Batch(consumerRegistry(t), handlers.BatchConfig{Size: 10, MaxWait: time.Second}, log.fn(nil))
		msgs := messages(t, 2)
		first := make(chan error, 1)
		go func() { first <- b.Handle(t.Context(), msgs[0]) }()
		synctest.Wait() // the first message leads the batch
		ctx, cancel := context.WithCancel(t.Context())
		second := make(chan error, 1)
		go func() { second <- b.Handle(ctx, msgs[1]) }()
		synctest.Wait()
		cancel()
		if err := <-second; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled waiter: %v", err)
		}
		if err := <-first; err != nil {
			t.Fatal(err)
		}
		if len(log.batches) != 1 || !slices.Equal(log.batches[0], []string{"o-0"}) {
			t.Fatalf("batches %v, want the first message alone", log.batches)
		}
	})
}

// When the first message's context ends before the batch ran, the function
// is not called and the others get an error that asks for redelivery.
func TestBatchLeaderCancelled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var log batchLog
		b := handlers.Batch(consumerRegistry(t), handlers.BatchConfig{Size: 10, MaxWait: time.Second}, log.fn(nil))
		msgs := messages(t, 2)
		ctx, cancel := context.WithCancel(t.Context())
		first := make(chan error, 1)
		go func() { first <- b.Handle(ctx, msgs[0]) }()
		synctest.Wait()
		second := make(chan error, 1)
		go func() { second <- b.Handle(t.Context(), msgs[1]) }()
		synctest.Wait()
		cancel()
		if err := <-first; !errors.Is(err, context.Canceled) {
			t.Fatalf("leader: %v", err)
		}
		err := <-second
		if !errors.Is(err, context.Canceled) || !middleware.IsRedelivery(err) {
			t.Fatalf("follower: %v, want a redelivery error", err)
		}
		if len(log.batches) != 0 {
			t.Fatalf("batches %v, want none", log.batches)
		}
		// The next message opens a new batch.
		if err := b.Handle(t.Context(), msgs[1]); err != nil {
			t.Fatal(err)
		}
	})
}

// A panicking batch function fails the other messages of the batch instead
// of leaving them waiting, and the panic reaches the first message's caller.
func TestBatchPanic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := handlers.Batch(consumerRegistry(t), handlers.BatchConfig{Size: 2, MaxWait: time.Second},
			func(context.Context, []handlers.Item[ordertest.V3]) error { panic("boom") })
		msgs := messages(t, 2)
		var panicked any
		first := make(chan error, 1)
		go func() {
			defer func() {
				panicked = recover()
				close(first)
			}()
			first <- b.Handle(t.Context(), msgs[0])
		}()
		synctest.Wait()
		err := b.Handle(t.Context(), msgs[1])
		<-first
		if panicked != "boom" {
			t.Fatalf("leader recovered %v", panicked)
		}
		if err == nil || middleware.IsRedelivery(err) {
			t.Fatalf("follower: %v, want a transient error", err)
		}
	})
}

// Process batches a slice in order and reports per message: decoded ones by
// their batch, poison ones alone; after a failing batch the rest is not
// handled.
func TestBatchProcess(t *testing.T) {
	boom := errors.New("boom")
	var log batchLog
	b := handlers.Batch(consumerRegistry(t), handlers.BatchConfig{Size: 2},
		log.fn(func(items []handlers.Item[ordertest.V3]) error {
			if items[0].Event.OrderID == "o-3" {
				return boom
			}
			return nil
		}))
	msgs := messages(t, 6)
	msgs[1].Metadata[schema.KeyType] = "com.example.other"
	errs := b.Process(context.Background(), msgs)
	want := []error{nil, schema.ErrUnknownType, nil, boom, boom, boom}
	for i := range msgs {
		if (want[i] == nil) != (errs[i] == nil) || !errors.Is(errs[i], want[i]) {
			t.Errorf("message %d: %v, want %v", i, errs[i], want[i])
		}
	}
	wantBatches := [][]string{{"o-0", "o-2"}, {"o-3", "o-4"}}
	if !slices.EqualFunc(log.batches, wantBatches, slices.Equal) {
		t.Fatalf("batches %v, want %v", log.batches, wantBatches)
	}
}
