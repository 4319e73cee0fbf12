package main

import (
	"context"
	"log/slog"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/broker"
)

// browse returns the dead letters waiting for the group bus.DeadLetterGroup
// on the dead-letter topic, oldest first, without consuming them: list,
// show and the selection of replay and purge work on such a snapshot. The
// bus's own Bus.DeadLetters cannot do that: it consumes as the group, and a
// message it does not ack either blocks the rest (a Kafka nack blocks its
// partition and comes back) or comes back first again (a RabbitMQ
// requeue). The broker reads them through its broker.Browser capability,
// mapped as its subscribers map them, so that the ids and keys seen here
// are the ones Bus.DeadLetters delivers. A broker without it (the
// in-process one) has nothing for this command: errMemory.
func (c *cli) browse(ctx context.Context) ([]*message.Message, error) {
	br, err := bus.OpenBroker(c.cfg, bus.WithLogger(c.logger()))
	if err != nil {
		return nil, err
	}
	defer br.Close()
	bw, ok := br.(broker.Browser)
	if !ok {
		return nil, errMemory
	}
	return bw.Browse(ctx, c.cfg.DeadLetterTopic, bus.DeadLetterGroup)
}

// logger is the logger of the brokers and buses the command opens: the
// warnings and errors on stderr with -v, else nothing.
func (c *cli) logger() *slog.Logger {
	if c.opts.verbose {
		return slog.New(slog.NewTextHandler(c.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return slog.New(slog.DiscardHandler)
}
