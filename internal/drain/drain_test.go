package drain_test

import (
	"context"
	"strconv"
	"testing"
	"testing/synctest"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus/memory"
	"github.com/busline/busline/internal/drain"
)

// Once fetching stopped, the gate hands the router nothing more, however
// many messages the broker has ready: the one it held goes back to the
// broker. (The gate used to read the broker and the stop in one select,
// which picks at random among ready cases, and kept forwarding about half
// the time.) In-process broker, in a synctest bubble so that "the broker
// has the next message ready" is a state the test waits for, not a race.
func TestGateForwardsNothingAfterStop(t *testing.T) {
	for round := range 20 {
		synctest.Test(t, func(t *testing.T) {
			ctx := context.Background()
			br, err := memory.New(memory.Config{})
			if err != nil {
				t.Fatal(err)
			}
			defer br.Close()
			if err := br.Prepare(ctx, "t", "g"); err != nil {
				t.Fatal(err)
			}
			for i := range 10 {
				if err := br.Publish("t", message.NewMessage(strconv.Itoa(i), nil)); err != nil {
					t.Fatal(err)
				}
			}
			sub, err := br.Subscriber("g")
			if err != nil {
				t.Fatal(err)
			}
			g := drain.NewGate()
			gs := g.Subscriber(sub)
			out, err := gs.Subscribe(ctx, "t")
			if err != nil {
				t.Fatal(err)
			}
			(<-out).Ack()
			synctest.Wait() // the next message waits in the gate for the router
			g.StopFetching()
			after := 0
			for range 5 {
				synctest.Wait()
				select {
				case m := <-out:
					after++
					m.Ack()
				default:
				}
			}
			if err := gs.Close(); err != nil {
				t.Fatal(err)
			}
			if after > 0 {
				t.Fatalf("round %d: the gate forwarded %d messages after fetching stopped, want none", round, after)
			}
		})
	}
}
