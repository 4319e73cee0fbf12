package middleware

// Observer is told what the steps of a stack did; Busline's telemetry implements it.
// Methods run on the handler goroutine (BreakerChanged: where the state changed), must be
// safe for concurrent use and must not block. Embed NopObserver to implement only some.
type Observer interface {
	Retried(RetryInfo)           // before each in-process retry wait
	DeadLettered(DeadLetterInfo) // after a dead letter was published
	Duplicate(DedupInfo)         // a message was skipped as already processed
	DedupWaited(DedupInfo)       // a message waited for a concurrent claim of its key
	DedupStoreFailed(DedupInfo)  // a store operation failed (Op, Err)
	Throttled(ThrottleInfo)      // an attempt waited for the throttle
	BreakerChanged(BreakerInfo)  // the breaker changed state
}

// NopObserver implements Observer and observes nothing.
type NopObserver struct{}

// Retried does nothing.
func (NopObserver) Retried(RetryInfo) {}

// DeadLettered does nothing.
func (NopObserver) DeadLettered(DeadLetterInfo) {}

// Duplicate does nothing.
func (NopObserver) Duplicate(DedupInfo) {}

// DedupWaited does nothing.
func (NopObserver) DedupWaited(DedupInfo) {}

// DedupStoreFailed does nothing.
func (NopObserver) DedupStoreFailed(DedupInfo) {}

// Throttled does nothing.
func (NopObserver) Throttled(ThrottleInfo) {}

// BreakerChanged does nothing.
func (NopObserver) BreakerChanged(BreakerInfo) {}

// observerOr returns o, or def when o is nil (a step's own Observer wins
// over the stack's).
func observerOr(o, def Observer) Observer {
	if o != nil {
		return o
	}
	return def
}
