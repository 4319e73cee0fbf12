package amqp

import (
	"errors"
	"fmt"
	"net/url"

	"github.com/busline/busline/internal/tlsconfig"
)

// Defaults applied to zero fields of [Config].
const (
	DefaultPrefetch        = 16
	DefaultChannelPoolSize = 4
	DefaultConcurrency     = 1
	DefaultPublishWindow   = 512
)

// TLSConfig holds TLS settings; the zero value means no TLS (unless the URL
// scheme is amqps).
type TLSConfig = tlsconfig.Config

// Config configures the RabbitMQ broker. Zero fields mean the documented
// defaults; only URL is required.
type Config struct {
	// URL is the AMQP 0-9-1 URL, e.g. amqp://guest:guest@127.0.0.1:5672/.
	// Required.
	URL string
	// Prefetch bounds the unacknowledged deliveries a subscription holds:
	// those in its handlers plus those buffered for them. It must not be
	// below Concurrency. Zero: the larger of 16 and Concurrency.
	Prefetch int
	// Concurrency is how many messages one subscription hands out at a
	// time before the first of them is acked or nacked: with the router,
	// how many handlers of one subscription run at once. Zero: 1, which
	// keeps queue order (the next message is handed out only after the
	// previous one was settled); above 1 messages of one subscription are
	// handled in parallel and may finish, and be redelivered, out of order.
	Concurrency int
	// ChannelPoolSize is the number of channels publishing shares; each
	// Publish call sends its messages on one of them, in order. Zero: 4.
	ChannelPoolSize int
	// PublishWindow bounds the published messages per channel that RabbitMQ
	// has not confirmed yet: Publish sends up to this many before it waits
	// for the first confirm. Zero: 512.
	PublishWindow int
	// AllowUnroutable publishes without the mandatory flag: a message no
	// queue is bound to is confirmed and dropped by RabbitMQ. Zero (false):
	// messages are published mandatory, and one RabbitMQ cannot route is
	// returned and reported by Publish as [ErrUnroutable].
	AllowUnroutable bool
	// TLS configures TLS. Zero: plaintext, or the system defaults for amqps.
	// When TLS.Enabled is set and the URL scheme is amqp, the broker dials
	// amqps instead (default port 5671 unless the URL names one).
	TLS TLSConfig
}

// Validate reports every problem of c at once.
func (c Config) Validate() error {
	var errs []error
	if c.URL == "" {
		errs = append(errs, errors.New("amqp: no URL (set BUSLINE_AMQP_URL)"))
	} else if u, err := url.Parse(c.URL); err != nil {
		errs = append(errs, fmt.Errorf("amqp: URL: %w", err))
	} else if u.Scheme != "amqp" && u.Scheme != "amqps" {
		errs = append(errs, fmt.Errorf("amqp: URL scheme %q is neither amqp nor amqps", u.Scheme))
	}
	if c.Prefetch < 0 {
		errs = append(errs, fmt.Errorf("amqp: prefetch %d is negative", c.Prefetch))
	}
	if c.Concurrency < 0 {
		errs = append(errs, fmt.Errorf("amqp: concurrency %d is negative", c.Concurrency))
	}
	if c.Prefetch > 0 && c.Prefetch < c.Concurrency {
		errs = append(errs, fmt.Errorf("amqp: prefetch %d is below concurrency %d: handlers would wait for deliveries RabbitMQ may not send", c.Prefetch, c.Concurrency))
	}
	if c.ChannelPoolSize < 0 {
		errs = append(errs, fmt.Errorf("amqp: channel pool size %d is negative", c.ChannelPoolSize))
	}
	if c.PublishWindow < 0 {
		errs = append(errs, fmt.Errorf("amqp: publish window %d is negative", c.PublishWindow))
	}
	if err := c.TLS.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("amqp: %w", err))
	}
	return errors.Join(errs...)
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Prefetch == 0 {
		c.Prefetch = max(DefaultPrefetch, c.Concurrency)
	}
	if c.ChannelPoolSize == 0 {
		c.ChannelPoolSize = DefaultChannelPoolSize
	}
	if c.PublishWindow == 0 {
		c.PublishWindow = DefaultPublishWindow
	}
	return c
}
