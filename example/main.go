// Command example is an order-processing service (orders -> billing ->
// shipping) on Busline that tells what the bus does, step by step:
// correlation and causation ids across three hops, retries of a flaky
// downstream, a poison message in the dead-letter topic, a duplicate skipped,
// a v1 event upcast to v2, throttling, a circuit breaker, a graceful shutdown
// that finishes the message in flight, and the spans and metrics of it all.
//
// It runs on the in-process broker and exits by itself:
//
//	go run ./example
//
// The broker is chosen by the BUSLINE_* environment variables alone
// (see bus.ConfigFromEnv):
//
//	go run ./example/kafka &   # an in-process Kafka on 127.0.0.1:9092
//	BUSLINE_BROKER=kafka BUSLINE_KAFKA_BROKERS=127.0.0.1:9092 go run ./example
//	BUSLINE_BROKER=amqp BUSLINE_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ go run ./example
//
// More variables:
//
//	BUSLINE_EXAMPLE_PREFIX        topic name prefix (default "example.")
//	BUSLINE_EXAMPLE_LOG           log level of the bus's logs on stderr:
//	                              debug, info, warn, error (default: off)
//	OTEL_EXPORTER_OTLP_ENDPOINT   also send spans over OTLP/HTTP there
//	                              (e.g. http://localhost:4318)
//
// On Kafka and RabbitMQ the poison message stays in the dead-letter topic;
// list it with the dead-letter CLI: go run ./cmd/busline list.
// SIGINT or SIGTERM shut the bus down gracefully.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/busline/busline/bus"
	bustel "github.com/busline/busline/bus/telemetry"
	"github.com/busline/busline/middleware"
)

// config configures run.
type config struct {
	// Bus is the bus configuration: the broker and its settings.
	Bus bus.Config
	// Prefix is prepended to every topic name. Zero: "example.".
	Prefix string
	// OTLPEndpoint, when set, makes the example export its spans over
	// OTLP/HTTP too (otlptracehttp reads OTEL_EXPORTER_OTLP_* itself).
	OTLPEndpoint string
	// Logger receives the bus's and Watermill's logs. Zero: discarded.
	Logger *slog.Logger
}

// configFromEnv reads config from BUSLINE_* (bus.ConfigFromEnv),
// BUSLINE_EXAMPLE_* and OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT.
func configFromEnv(stderr io.Writer) (config, error) {
	bc, err := bus.ConfigFromEnv()
	if err != nil {
		return config{}, err
	}
	cfg := config{Bus: bc, Prefix: os.Getenv("BUSLINE_EXAMPLE_PREFIX")}
	for _, k := range []string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"} {
		if v := os.Getenv(k); v != "" && cfg.OTLPEndpoint == "" {
			cfg.OTLPEndpoint = v
		}
	}
	if lvl := os.Getenv("BUSLINE_EXAMPLE_LOG"); lvl != "" {
		var l slog.Level
		if err := l.UnmarshalText([]byte(lvl)); err != nil {
			return config{}, fmt.Errorf("BUSLINE_EXAMPLE_LOG: %w", err)
		}
		cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: l}))
	}
	return cfg, nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg, err := configFromEnv(os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(2)
	}
	if err := run(ctx, cfg, os.Stdout); err != nil {
		if errors.Is(err, context.Canceled) {
			fmt.Fprintln(os.Stderr, "example: interrupted; the bus shut down gracefully")
			os.Exit(130)
		}
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(1)
	}
}

// run tells the story on the configured broker, printing it to out, and
// returns once the bus shut down. When ctx ends (SIGINT, SIGTERM) the bus
// shuts down gracefully and run returns ctx's error.
func run(ctx context.Context, cfg config, out io.Writer) (err error) {
	start := time.Now()
	if cfg.Prefix == "" {
		cfg.Prefix = "example."
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	reg, err := newRegistry()
	if err != nil {
		return err
	}
	tel, err := newTelemetry(ctx, cfg.OTLPEndpoint)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if terr := tel.shutdown(sctx); terr != nil && err == nil {
			err = fmt.Errorf("telemetry shutdown: %w", terr)
		}
	}()

	b, err := bus.New(cfg.Bus, append(tel.busOptions(), bus.WithLogger(logger))...)
	if err != nil {
		return err
	}
	s := &service{
		b:          b,
		reg:        reg,
		legacy:     newLegacyRegistry(),
		out:        &printer{w: out},
		topics:     newTopics(cfg.Prefix),
		start:      start,
		flows:      make(map[string]*flow),
		charges:    make(map[string]int),
		duplicates: make(chan string, 16),
		deadLetter: make(chan middleware.DeadLetterInfo, 16),
		waits:      make(map[string]time.Duration),
		report:     make(chan struct{}),
	}
	bc := b.Config()
	s.out.line("busline example: orders -> billing -> shipping on %s", shortBroker(bc))
	s.out.line("topics %s*, group %s, dead letters to %s", cfg.Prefix, bc.Group, bc.DeadLetterTopic)
	if err := s.register(); err != nil {
		return errors.Join(err, b.Close(context.WithoutCancel(ctx)))
	}

	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	runErr := make(chan error, 1)
	go func() { runErr <- b.Run(runCtx) }()
	// stopBus shuts the bus down gracefully (also on an early return) and
	// returns Run's error.
	stopped := false
	stopBus := func() error {
		if stopped {
			return nil
		}
		stopped = true
		stopRun()
		return <-runErr
	}
	defer func() {
		if rerr := stopBus(); rerr != nil && err == nil {
			err = rerr
		}
	}()
	select {
	case <-b.Running():
	case err := <-runErr:
		stopped = true
		return fmt.Errorf("bus stopped: %w", err)
	case <-ctx.Done():
		return ctx.Err()
	}

	flowCorr, err := s.stepFlow(ctx)
	if err != nil {
		return err
	}
	for _, step := range []func(context.Context) error{
		s.stepRetry, s.stepDedup, s.stepUpcast, s.stepPoison, s.stepThrottle, s.stepBreaker,
	} {
		if err := step(ctx); err != nil {
			return err
		}
	}

	// Graceful shutdown with a message in flight.
	report, err := s.stepReport(ctx)
	if err != nil {
		return err
	}
	s.out.step(scReport, "shutdown requested (as on SIGTERM) while the report is in flight")
	if err := stopBus(); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	select {
	case <-report.done:
		s.out.step(scReport, "bus stopped after the in-flight report finished; nothing was cut off")
	default:
		return errors.New("the bus stopped before the in-flight report finished")
	}

	// Telemetry.
	if err := tel.tp.ForceFlush(ctx); err != nil {
		return err
	}
	traceIDs, chain, nspans := tel.spanSummary(flowCorr, cfg.Prefix)
	if len(traceIDs) == 1 {
		s.out.step("telemetry", "o-1001 is one trace %s: %s", traceIDs[0], chain)
	} else {
		s.out.step("telemetry", "o-1001 spans are in %d traces: %s", len(traceIDs), chain)
	}
	m, err := tel.metricTotals(ctx)
	if err != nil {
		return err
	}
	s.out.step("telemetry", "%d spans; metrics: sent=%d consumed=%d retries=%d dead-lettered=%d dedup-hits=%d throttle-waits=%d",
		nspans, m["messaging.client.sent.messages"], m["messaging.client.consumed.messages"],
		m[bustel.MetricRetries], m[bustel.MetricDeadLettered], m[bustel.MetricDedupHits], m[bustel.MetricThrottleWaits])
	// consumed is not sent: it counts deliveries to handlers. The
	// dead-letter copies are sent to the dead-letter topic, which no
	// handler reads, and a nacked message is delivered (consumed) again.
	sent, consumed, dl := m["messaging.client.sent.messages"], m["messaging.client.consumed.messages"], m[bustel.MetricDeadLettered]
	s.out.step("telemetry", "consumed = sent - %d dead-letter copies (read by the dead-letter reader, not a handler) + %d redeliveries (the nacked warehouse calls)",
		dl, consumed-(sent-dl))
	if cfg.OTLPEndpoint != "" {
		s.out.line("spans also exported over OTLP/HTTP to %s", cfg.OTLPEndpoint)
	}
	s.out.line("done in %s", time.Since(start).Round(10*time.Millisecond))
	return nil
}
