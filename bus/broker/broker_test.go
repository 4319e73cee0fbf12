package broker_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/busline/busline/bus/broker"
)

func TestPublishErrorMessage(t *testing.T) {
	tooLarge := errors.New("too large")
	e := &broker.PublishError{Topic: "t", Total: 9}
	for i := range 7 {
		e.Failed = append(e.Failed, broker.FailedMessage{Index: i, UUID: fmt.Sprint("u", i), Err: tooLarge})
	}
	got := e.Error()
	if !strings.HasPrefix(got, "broker: publish to t: 7 of 9 messages failed: u0: ") || !strings.HasSuffix(got, "; and 2 more") {
		t.Errorf("Error() = %q", got)
	}
	if !errors.Is(e, tooLarge) {
		t.Errorf("errors.Is(%v, tooLarge) = false", e)
	}
}

func TestSubscriberOptionsValidate(t *testing.T) {
	for _, o := range []broker.SubscriberOptions{
		{}, {Ordering: broker.OrderKey}, {BatchSize: 8}, {Transactions: true, Ordering: broker.OrderPartition},
	} {
		if err := o.Validate(); err != nil {
			t.Errorf("%+v: %v", o, err)
		}
	}
	for _, o := range []broker.SubscriberOptions{
		{Ordering: "lane"}, {BatchSize: -1}, {BatchSize: 8, Ordering: broker.OrderKey},
		{Transactions: true, Ordering: broker.OrderUnordered}, {Transactions: true, BatchSize: 2},
	} {
		if err := o.Validate(); err == nil {
			t.Errorf("%+v: valid, want an error", o)
		}
	}
}
