package bus

import "context"

// PollTelemetry refreshes the broker gauges' cache at once, for tests: the
// poller's work without waiting for its interval.
func (b *Bus) PollTelemetry(ctx context.Context) { b.tel.Poll(ctx) }
