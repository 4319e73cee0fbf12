package middleware

// Observer is told what the steps of a stack did; Busline's telemetry
// implements it. Methods run on the handler goroutine (BreakerChanged:
// where the state changed), must be safe for concurrent use and must not
// block. Embed [NopObserver] to implement only some.
type Observer interface {
	Retried(RetryInfo)           // before each in-process retry wait
	DeadLettered(DeadLetterInfo) // after a dead letter was published
	Duplicate(DedupInfo)         // a message was skipped as already processed
	DedupWaited(DedupInfo)       // a message waited for a concurrent claim of its key
	DedupStoreFailed(DedupInfo)  // a store operation failed (Op, Err)
	Throttled(ThrottleInfo)      // an attempt waited for the throttle
	BreakerChanged(BreakerInfo)  // the breaker changed state
	Redelivered(RedeliveryInfo)  // a message was handed to the delayed tier
}

// NopObserver implements [Observer] and observes nothing.
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

// Redelivered does nothing.
func (NopObserver) Redelivered(RedeliveryInfo) {}

// observerOr returns o, or def when o is nil (a step's own Observer wins
// over the stack's).
func observerOr(o, def Observer) Observer {
	if o != nil {
		return o
	}
	return def
}

// Observers returns an [Observer] that tells each of obs, in order; nil
// ones are left out (Observers() and Observers(nil) are nil).
func Observers(obs ...Observer) Observer {
	var all multiObserver
	for _, o := range obs {
		switch o := o.(type) {
		case nil:
		case multiObserver:
			all = append(all, o...)
		default:
			all = append(all, o)
		}
	}
	switch len(all) {
	case 0:
		return nil
	case 1:
		return all[0]
	}
	return all
}

type multiObserver []Observer

func (m multiObserver) Retried(i RetryInfo) {
	for _, o := range m {
		o.Retried(i)
	}
}

func (m multiObserver) DeadLettered(i DeadLetterInfo) {
	for _, o := range m {
		o.DeadLettered(i)
	}
}

func (m multiObserver) Duplicate(i DedupInfo) {
	for _, o := range m {
		o.Duplicate(i)
	}
}

func (m multiObserver) DedupWaited(i DedupInfo) {
	for _, o := range m {
		o.DedupWaited(i)
	}
}

func (m multiObserver) DedupStoreFailed(i DedupInfo) {
	for _, o := range m {
		o.DedupStoreFailed(i)
	}
}

func (m multiObserver) Throttled(i ThrottleInfo) {
	for _, o := range m {
		o.Throttled(i)
	}
}

func (m multiObserver) BreakerChanged(i BreakerInfo) {
	for _, o := range m {
		o.BreakerChanged(i)
	}
}

func (m multiObserver) Redelivered(i RedeliveryInfo) {
	for _, o := range m {
		o.Redelivered(i)
	}
}
