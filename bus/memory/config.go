package memory

import (
	"errors"
	"fmt"
	"time"
)

// Config configures the in-process broker. The zero value is ready to use.
type Config struct {
	// Buffer is the capacity of each queue: one per topic and consumer group.
	// When a queue is full, Publish waits (backpressure). Zero: 1024.
	Buffer int
	// PublishTimeout bounds how long Publish waits for room in a full queue
	// before it fails with ErrQueueFull. Zero: 10s. Negative: wait as long as
	// the message's context allows.
	PublishTimeout time.Duration
}

// Validate reports every problem of c at once.
func (c Config) Validate() error {
	var errs []error
	if c.Buffer < 0 {
		errs = append(errs, fmt.Errorf("memory: buffer %d is negative", c.Buffer))
	}
	return errors.Join(errs...)
}
