package middleware_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/middleware"
)

func TestRecover(t *testing.T) {
	h := middleware.Recover()(func(*message.Message) ([]*message.Message, error) {
		panic(errTransient)
	})
	out, err := h(newMsg("m", ""))
	var pe *middleware.PanicError
	if out != nil || !errors.As(err, &pe) {
		t.Fatalf("got %v, %v", out, err)
	}
	if middleware.ErrorType(err) != middleware.ReasonPanic || middleware.IsPermanent(err) {
		t.Errorf("type %q, permanent %v", middleware.ErrorType(err), middleware.IsPermanent(err))
	}
	if !errors.Is(err, errTransient) || !strings.Contains(string(pe.Stack), "recover_test.go") {
		t.Errorf("panic value or stack missing: %v\n%s", err, pe.Stack)
	}
	if strings.Contains(err.Error(), "goroutine") {
		t.Errorf("stack trace in the error text: %q", err.Error())
	}
}
