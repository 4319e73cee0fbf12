package middleware_test

import (
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/middleware"
	"github.com/busline/busline/schema"
)

// printPublisher prints the dead letters it is given.
type printPublisher struct{}

func (printPublisher) Publish(topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		fmt.Printf("dead letter %s on %s: reason=%s attempts=%s\n", m.UUID, topic,
			m.Metadata.Get(middleware.KeyDLQReason), m.Metadata.Get(middleware.KeyDLQAttempts))
	}
	return nil
}

func (printPublisher) Close() error { return nil }

// The default stack and its order, outermost first. The dead-letter step is
// on because a publisher is set; throttle is off because no limit is set.
func ExampleStack() {
	cfg := middleware.StackConfig{
		DeadLetter: middleware.DeadLetterConfig{Publisher: printPublisher{}, Topic: "orders.dlq"},
		Retry:      middleware.RetryConfig{MaxAttempts: 3, InitialInterval: time.Millisecond},
	}
	for _, s := range cfg.Steps() {
		fmt.Println(s)
	}

	calls := 0
	h := middleware.Stack(cfg)(func(msg *message.Message) ([]*message.Message, error) {
		calls++
		fmt.Printf("attempt %d of %s, correlation %s\n", middleware.AttemptFromContext(msg.Context()),
			msg.UUID, middleware.CorrelationIDFromContext(msg.Context()))
		switch msg.UUID {
		case "poison":
			return nil, middleware.Permanent(errors.New("cannot decode"))
		case "flaky":
			if calls == 2 {
				panic("flaky dependency")
			}
		}
		return nil, nil
	})
	for _, id := range []string{"poison", "flaky", "flaky"} {
		msg := message.NewMessage(id, nil)
		msg.Metadata.Set(schema.KeyCorrelationID, "c-1")
		_, err := h(msg)
		fmt.Printf("%s: err=%v\n", id, err)
	}
	// Output:
	// correlation
	// nack-delay
	// dead-letter
	// dedup
	// breaker
	// retry
	// timeout
	// recover
	// attempt 1 of poison, correlation c-1
	// dead letter poison on orders.dlq: reason=permanent attempts=1
	// poison: err=<nil>
	// attempt 1 of flaky, correlation c-1
	// attempt 2 of flaky, correlation c-1
	// flaky: err=<nil>
	// flaky: err=<nil>
}

// A dead letter goes back to its original topic with the dead-letter
// details stripped and the same id.
func ExampleReplay() {
	dl := message.NewMessage("m-1", message.Payload(`{"order":42}`))
	dl.Metadata.Set(middleware.KeyDLQReason, "handler_error")
	dl.Metadata.Set(middleware.KeyDLQTopic, "orders")
	topic, msg, err := middleware.Replay(dl)
	fmt.Println(topic, msg.UUID, string(msg.Payload), msg.Metadata.Get(middleware.KeyDLQReason) == "", err)
	// Output: orders m-1 {"order":42} true <nil>
}

// Correlation inside a handler: Propagate stamps what the handler publishes.
func ExamplePropagate() {
	h := middleware.Correlation()(func(msg *message.Message) ([]*message.Message, error) {
		event := message.NewMessage("evt-2", nil)
		middleware.Propagate(msg.Context(), event) // what the bus does on publish
		fmt.Println(event.Metadata.Get(schema.KeyCorrelationID), event.Metadata.Get(schema.KeyCausationID))
		return nil, nil
	})
	_, _ = h(message.NewMessage("cmd-1", nil))
	// Output: cmd-1 cmd-1
}
