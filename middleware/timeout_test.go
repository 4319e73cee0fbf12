package middleware_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/middleware"
)

func TestTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := middleware.Timeout(time.Second)(func(m *message.Message) ([]*message.Message, error) {
			<-m.Context().Done()
			return nil, m.Context().Err()
		})
		msg := newMsg("m", "")
		orig := msg.Context()
		start := time.Now()
		_, err := h(msg)
		var te *middleware.TimeoutError
		if !errors.As(err, &te) || te.After != time.Second || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err %v", err)
		}
		if middleware.ErrorType(err) != middleware.ReasonTimeout || middleware.IsPermanent(err) || middleware.IsRedelivery(err) {
			t.Errorf("timeout must be transient with type %q", middleware.ReasonTimeout)
		}
		if time.Since(start) != time.Second || msg.Context() != orig {
			t.Errorf("took %v; context restored: %v", time.Since(start), msg.Context() == orig)
		}
	})
}

func TestTimeoutKeepsFastResults(t *testing.T) {
	h := middleware.Timeout(time.Hour)(func(*message.Message) ([]*message.Message, error) { return nil, errTransient })
	if _, err := h(newMsg("m", "")); err != errTransient {
		t.Errorf("err %v, want the handler's error unchanged", err)
	}
}

func TestTimeoutPanicsOnNonPositive(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("no panic")
		}
	}()
	middleware.Timeout(0)
}
