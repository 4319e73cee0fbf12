package bus

import (
	"errors"

	"github.com/busline/busline/bus/broker"
	"github.com/busline/busline/middleware"
)

// Errors returned by the bus.
var (
	// ErrClosed is returned by calls on a closed or closing bus. It is
	// broker.ErrClosed, which the brokers return too.
	ErrClosed = broker.ErrClosed
	// ErrRunning is returned by calls that must come before Run.
	ErrRunning = errors.New("bus: already running")
	// ErrHandlersStopped is returned by Run when every handler stopped
	// without Close being called, for instance because a broker
	// subscription ended for good.
	ErrHandlersStopped = errors.New("bus: all handlers stopped")
)

// Permanent marks err as permanent (middleware.IsPermanent): the message is
// not retried but dead-lettered at once. Use it for errors retrying cannot
// fix (invalid input, a business rule). Permanent(nil) is nil.
func Permanent(err error) error { return middleware.Permanent(err) }
