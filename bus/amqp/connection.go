package amqp

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/busline/busline/bus/broker"
)

// Reconnection backoff: the first redial waits reconnectMin, each failure
// doubles the wait up to reconnectMax, with up to 50% random jitter.
const (
	reconnectMin = 250 * time.Millisecond
	reconnectMax = 30 * time.Second
)

// connection keeps one AMQP connection up. It dials once in dial (an
// unreachable server fails New), then a goroutine it owns watches the
// connection and, when it drops, redials with backoff until it is back or
// Close is called. While it is down, current fails fast with
// ErrNotConnected and wait blocks until it is back.
type connection struct {
	uri    string
	cfg    amqp091.Config
	name   string
	logger watermill.LoggerAdapter

	mu      sync.Mutex
	conn    *amqp091.Connection // nil while down
	gen     uint64              // counts successful dials
	up      chan struct{}       // closed while conn is set
	downErr error               // why the connection dropped
	closed  bool

	closing chan struct{}
	done    chan struct{} // closed when the watcher ends
}

func dial(uri string, cfg amqp091.Config, name string, logger watermill.LoggerAdapter) (*connection, error) {
	props := amqp091.NewConnectionProperties()
	props.SetClientConnectionName(name)
	cfg.Properties = props
	c := &connection{
		uri:     uri,
		cfg:     cfg,
		name:    name,
		logger:  logger,
		up:      make(chan struct{}),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
	}
	conn, err := amqp091.DialConfig(uri, cfg)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.set(conn)
	c.mu.Unlock()
	go c.watch(conn)
	return c, nil
}

// set installs a new live connection; c.mu is held.
func (c *connection) set(conn *amqp091.Connection) {
	c.conn = conn
	c.gen++
	c.downErr = nil
	close(c.up)
}

// current returns the live connection and its generation, or an error
// wrapping ErrNotConnected or broker.ErrClosed at once.
func (c *connection) current() (*amqp091.Connection, uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return nil, 0, broker.ErrClosed
	case c.conn == nil:
		return nil, 0, fmt.Errorf("%w (%s: %v)", ErrNotConnected, c.name, c.downErr)
	}
	return c.conn, c.gen, nil
}

// wait returns the live connection, waiting until it is back when it is
// down. It gives up when ctx or stop ends, or the connection is closed.
func (c *connection) wait(ctx context.Context, stop <-chan struct{}) (*amqp091.Connection, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, broker.ErrClosed
		}
		if c.conn != nil {
			conn := c.conn
			c.mu.Unlock()
			return conn, nil
		}
		up := c.up
		c.mu.Unlock()
		select {
		case <-up:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-stop:
			return nil, broker.ErrClosed
		case <-c.closing:
			return nil, broker.ErrClosed
		}
	}
}

// watch redials whenever the connection drops, until Close.
func (c *connection) watch(conn *amqp091.Connection) {
	defer close(c.done)
	for {
		notify := conn.NotifyClose(make(chan *amqp091.Error, 1))
		var reason error
		select {
		case err, ok := <-notify:
			if ok && err != nil {
				reason = err
			} else {
				reason = amqp091.ErrClosed
			}
		case <-c.closing:
			return
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return
		}
		c.conn = nil
		c.up = make(chan struct{})
		c.downErr = reason
		c.mu.Unlock()
		c.logger.Error("RabbitMQ connection lost, reconnecting", reason, watermill.LogFields{"connection": c.name})

		if conn = c.redial(); conn == nil {
			return
		}
	}
}

// redial dials until it succeeds, with backoff, and installs the new
// connection. It returns nil when Close ends it first.
func (c *connection) redial() *amqp091.Connection {
	delay := reconnectMin
	for {
		t := time.NewTimer(delay + rand.N(delay/2))
		select {
		case <-t.C:
		case <-c.closing:
			t.Stop()
			return nil
		}
		conn, err := amqp091.DialConfig(c.uri, c.cfg)
		if err != nil {
			c.logger.Error("RabbitMQ reconnect failed, retrying", err, watermill.LogFields{"connection": c.name, "retry_in": delay * 2})
			delay = min(delay*2, reconnectMax)
			continue
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			_ = conn.Close()
			return nil
		}
		c.set(conn)
		c.mu.Unlock()
		c.logger.Info("RabbitMQ connection re-established", watermill.LogFields{"connection": c.name})
		return conn
	}
}

// Close stops reconnecting and closes the connection. It is idempotent.
func (c *connection) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	close(c.closing)
	<-c.done
	c.mu.Lock()
	conn := c.conn
	c.conn = nil
	c.mu.Unlock()
	if conn != nil {
		if err := conn.Close(); err != nil && !errors.Is(err, amqp091.ErrClosed) {
			return err
		}
	}
	return nil
}
