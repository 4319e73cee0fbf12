package amqp_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a goroutine outlives the tests: every
// subscription, channel operation and connection must end with Close.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
