// Command busline inspects and repairs the dead-letter topic of a Busline
// bus on Kafka or RabbitMQ: it lists and shows dead letters without
// consuming them, replays them to the topic they failed on, and purges them.
//
//	busline list
//	busline show <id>
//	busline replay (-all | -id ID | -filter key=value) [-rate N/s] [-dry-run]
//	busline purge  (-all | -id ID | -filter key=value) [-dry-run]
//
// It reads the bus configuration from the same BUSLINE_* environment
// variables as the services (see bus.ConfigFromEnv); run busline -help for
// the details.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"golang.org/x/time/rate"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/middleware"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// Exit codes.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

var errMemory = errors.New("the in-process broker (BUSLINE_BROKER=memory, the default) keeps dead letters only inside " +
	"the process that runs the bus, so there is nothing for this command to read: set BUSLINE_BROKER=kafka or amqp " +
	"(and BUSLINE_KAFKA_BROKERS or BUSLINE_AMQP_URL), or use Bus.DeadLetters and Bus.Replay inside the service")

const usage = `Usage: busline [-timeout d] [-idle d] [-v] <command> [flags]

Inspects and repairs the dead-letter topic of a Busline bus.

Commands:
  list                     list the dead letters waiting for replay: id, reason,
                           handler, original topic, attempts, last failure
  show <id>                show one dead letter: reason, error, headers, payload
  replay <selection> [-rate N/s] [-dry-run]
                           publish the selected dead letters back to the topic
                           they failed on (same id, payload, correlation id and
                           trace context), then remove them from the backlog
  purge <selection> [-dry-run]
                           remove the selected dead letters from the backlog

Selection (replay and purge):
  -all                     every dead letter in the backlog
  -id ID                   one dead letter (repeat for several)
  -filter key=value        dead letters whose key matches: reason, handler,
                           topic or type (repeat: all must match)
  -dry-run                 print what would happen, change nothing

Configuration comes from the BUSLINE_* environment variables the services use
(bus.ConfigFromEnv): BUSLINE_BROKER=kafka|amqp, BUSLINE_KAFKA_BROKERS or
BUSLINE_AMQP_URL (and their TLS/SASL variables), BUSLINE_DEAD_LETTER_TOPIC
(default busline.deadletter). The backlog is that of the consumer group
"deadletter" that the bus keeps on the dead-letter topic.

The in-process broker (memory, the default) is pointless here: it keeps dead
letters only inside the process that runs the bus. Use Bus.DeadLetters and
Bus.Replay in that process instead.

list and show never consume: on Kafka they read the topic from the group's
committed offset up to the high watermark with a plain consumer that commits
nothing; on RabbitMQ they get every message of the queue and give them all
back to their original positions (they are then marked redelivered).
replay and purge consume the backlog in order as the group "deadletter" up to
the last selected dead letter; dead letters before it that are not selected
are published again to the dead-letter topic (moving them to the end of the
backlog) before they are acknowledged, because neither a Kafka offset nor a
RabbitMQ requeue can skip over a message. Nothing is lost; a crash in between
may leave a copy twice.

Global flags:
`

// options are the global flags.
type options struct {
	timeout time.Duration
	idle    time.Duration
	verbose bool
}

// run runs the command line args and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("busline", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.DurationVar(&o.timeout, "timeout", 2*time.Minute, "bound of the whole command")
	fs.DurationVar(&o.idle, "idle", 30*time.Second, "replay, purge: give up when no dead letter arrives for this long (Kafka group joins take seconds)")
	fs.BoolVar(&o.verbose, "v", false, "log the bus's warnings and errors to stderr")
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return exitUsage
	}
	cfg, err := bus.ConfigFromEnv()
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		fmt.Fprintln(stderr, "busline: configuration:", err)
		return exitUsage
	}
	if cfg.DeadLetterTopic == "" {
		cfg.DeadLetterTopic = bus.DefaultDeadLetterTopic
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()

	c := &cli{cfg: cfg, opts: o, stdout: stdout, stderr: stderr}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	var code int
	switch cmd {
	case "list":
		code = c.list(ctx, rest)
	case "show":
		code = c.show(ctx, rest)
	case "replay", "purge":
		code = c.change(ctx, cmd, rest)
	case "help":
		fs.Usage()
		return exitOK
	default:
		fmt.Fprintf(stderr, "busline: unknown command %q\n\n", cmd)
		fs.Usage()
		return exitUsage
	}
	return code
}

type cli struct {
	cfg            bus.Config
	opts           options
	stdout, stderr io.Writer
}

// fail reports err and returns the exit code for it.
func (c *cli) fail(err error) int {
	fmt.Fprintln(c.stderr, "busline:", err)
	if errors.Is(err, errMemory) {
		return exitUsage
	}
	return exitError
}

func (c *cli) where() string {
	return fmt.Sprintf("%s on %s (group %s)", c.cfg.DeadLetterTopic, c.cfg.Broker, bus.DeadLetterGroup)
}

func (c *cli) list(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("list", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		fmt.Fprintln(c.stderr, "usage: busline list")
		return exitUsage
	}
	msgs, err := c.browse(ctx)
	if err != nil {
		return c.fail(err)
	}
	if len(msgs) == 0 {
		fmt.Fprintf(c.stdout, "no dead letters in %s\n", c.where())
		return exitOK
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tREASON\tHANDLER\tTOPIC\tATTEMPTS\tLAST FAILURE")
	for _, m := range msgs {
		md := m.Metadata
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", m.UUID, dash(md.Get(middleware.KeyDLQReason)),
			dash(md.Get(middleware.KeyDLQHandler)), dash(md.Get(middleware.KeyDLQTopic)),
			dash(md.Get(middleware.KeyDLQAttempts)), dash(md.Get(middleware.KeyDLQLastFailure)))
	}
	tw.Flush()
	fmt.Fprintf(c.stdout, "%d dead letter%s in %s\n", len(msgs), plural(len(msgs)), c.where())
	return exitOK
}

func (c *cli) show(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("show", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	if err := fs.Parse(args); err != nil || fs.NArg() != 1 {
		fmt.Fprintln(c.stderr, "usage: busline show <id>")
		return exitUsage
	}
	id := fs.Arg(0)
	msgs, err := c.browse(ctx)
	if err != nil {
		return c.fail(err)
	}
	i := slices.IndexFunc(msgs, func(m *message.Message) bool { return m.UUID == id })
	if i < 0 {
		return c.fail(fmt.Errorf("no dead letter %s in %s", id, c.where()))
	}
	printDeadLetter(c.stdout, msgs[i])
	return exitOK
}

// printDeadLetter prints m for show: one field a line, the continuation
// lines of a multi-line value (an error with a wrapped cause, a header)
// indented under the value, so that the layout holds.
func printDeadLetter(w io.Writer, m *message.Message) {
	md := m.Metadata
	field := func(name, v string) {
		fmt.Fprintf(w, "%-15s%s\n", name+":", indented(dash(v), 15))
	}
	field("id", m.UUID)
	field("reason", md.Get(middleware.KeyDLQReason))
	field("error", md.Get(middleware.KeyDLQError))
	field("handler", md.Get(middleware.KeyDLQHandler))
	field("topic", md.Get(middleware.KeyDLQTopic))
	field("attempts", md.Get(middleware.KeyDLQAttempts))
	field("first failure", md.Get(middleware.KeyDLQFirstFailure))
	field("last failure", md.Get(middleware.KeyDLQLastFailure))
	field("rounds", md.Get(middleware.KeyDLQRounds))
	for i, r := range middleware.RetryBudgetOf(md).History {
		line := fmt.Sprintf("%d attempt(s), failed %s: %s (%s)", r.Attempts, r.FailedAt.Format(time.RFC3339), r.Error, r.Reason)
		if r.Delay != "" {
			line += ", then waited " + r.Delay
		}
		field(fmt.Sprintf("  round %d", i+1), line)
	}
	fmt.Fprintln(w, "headers:")
	for _, k := range slices.Sorted(maps.Keys(md)) {
		fmt.Fprintf(w, "  %s: %s\n", k, indented(md[k], 4))
	}
	fmt.Fprintf(w, "payload (%d bytes):\n%s\n", len(m.Payload), m.Payload)
}

// indented returns s with every line after the first indented by n
// spaces.
func indented(s string, n int) string {
	if !strings.Contains(s, "\n") {
		return s
	}
	return strings.ReplaceAll(s, "\n", "\n"+strings.Repeat(" ", n))
}

// selection picks dead letters for replay and purge.
type selection struct {
	all     bool
	ids     []string
	filters map[string]string
}

var pastTense = map[string]string{"replay": "replayed", "purge": "purged"}

// filterKeys maps -filter keys to metadata keys.
var filterKeys = map[string]string{
	"reason":  middleware.KeyDLQReason,
	"handler": middleware.KeyDLQHandler,
	"topic":   middleware.KeyDLQTopic,
	"type":    "ce_type",
}

func (s selection) match(m *message.Message) bool {
	if s.all {
		return true
	}
	if len(s.ids) > 0 && !slices.Contains(s.ids, m.UUID) {
		return false
	}
	for k, v := range s.filters {
		if m.Metadata.Get(filterKeys[k]) != v {
			return false
		}
	}
	return true
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// change runs replay or purge.
func (c *cli) change(ctx context.Context, cmd string, args []string) int {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	var sel selection
	var ids, filters listFlag
	fs.BoolVar(&sel.all, "all", false, "select every dead letter")
	fs.Var(&ids, "id", "select the dead letter with this `id` (repeatable)")
	fs.Var(&filters, "filter", "select dead letters whose `key=value` matches; keys: reason, handler, topic, type (repeatable, all must match)")
	dry := fs.Bool("dry-run", false, "print what would happen, change nothing")
	rateFlag := "unlimited"
	if cmd == "replay" {
		fs.StringVar(&rateFlag, "rate", "unlimited", "replay at most `N/s` dead letters per second, e.g. 10/s or 0.5/s")
	}
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(c.stderr, "busline %s: %s\n", cmd, fmt.Sprintf(format, a...))
		fs.Usage()
		return exitUsage
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	sel.ids = ids
	sel.filters = map[string]string{}
	for _, f := range filters {
		k, v, ok := strings.Cut(f, "=")
		if _, known := filterKeys[k]; !ok || !known || v == "" {
			return usageErr("bad -filter %q: want reason=..., handler=..., topic=... or type=...", f)
		}
		sel.filters[k] = v
	}
	if sel.all == (len(sel.ids) > 0 || len(sel.filters) > 0) {
		return usageErr("select the dead letters with -all, or with -id and/or -filter")
	}
	var lim *rate.Limiter
	if rateFlag != "unlimited" {
		r, err := parseRate(rateFlag)
		if err != nil {
			return usageErr("%v", err)
		}
		lim = rate.NewLimiter(r, 1)
	}

	snapshot, err := c.browse(ctx)
	if err != nil {
		return c.fail(err)
	}
	// want counts the selected dead letters by id (an id may appear twice
	// after an interrupted move); last is the index of the last one.
	want := map[string]int{}
	last := -1
	for i, m := range snapshot {
		if sel.match(m) {
			want[m.UUID]++
			last = i
			if *dry {
				fmt.Fprintf(c.stdout, "would %s %s (reason %s, handler %s, topic %s)\n", cmd, m.UUID,
					dash(m.Metadata.Get(middleware.KeyDLQReason)), dash(m.Metadata.Get(middleware.KeyDLQHandler)),
					dash(m.Metadata.Get(middleware.KeyDLQTopic)))
			}
		}
	}
	n := 0
	for _, k := range want {
		n += k
	}
	if *dry {
		fmt.Fprintf(c.stdout, "dry run: %d of %d dead letter%s in %s would be %s; nothing changed\n", n, len(snapshot), plural(len(snapshot)), c.where(), pastTense[cmd])
		return exitOK
	}
	if n == 0 {
		fmt.Fprintf(c.stdout, "no dead letter selected among %d in %s\n", len(snapshot), c.where())
		return exitOK
	}
	done, err := c.consume(ctx, cmd, want, last+1, lim)
	fmt.Fprintf(c.stdout, "%s %d of %d selected dead letter%s in %s\n", pastTense[cmd], done, n, plural(n), c.where())
	if err != nil {
		return c.fail(err)
	}
	return exitOK
}

// consume reads the backlog as the group "deadletter" through the bus,
// up to upto messages or until every wanted id was handled: wanted ones are
// replayed (or purged) and acked, the others are published again to the
// dead-letter topic and acked. It returns how many wanted ones it handled.
func (c *cli) consume(ctx context.Context, cmd string, want map[string]int, upto int, lim *rate.Limiter) (done int, err error) {
	cfg := c.cfg
	// One dead letter at a time, in backlog order: the next delivery then
	// also shows that the previous ack was settled (see below).
	cfg.AMQP.Concurrency = 1
	b, err := bus.New(cfg, bus.WithLogger(c.logger()))
	if err != nil {
		return 0, err
	}
	defer func() {
		// Closing the bus commits the Kafka offsets of what was acked.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if cerr := b.Close(cctx); cerr != nil && err == nil {
			err = cerr
		}
	}()
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	ch, err := b.DeadLetters(sctx)
	if err != nil {
		return 0, err
	}
	remaining := 0
	for _, k := range want {
		remaining += k
	}
	idle := time.NewTimer(c.opts.idle)
	defer idle.Stop()
	for seen := 0; remaining > 0 && seen < upto; seen++ {
		var m *message.Message
		select {
		case m = <-ch:
		case <-idle.C:
			return done, fmt.Errorf("no dead letter arrived for %s; %d selected not found (consumed by someone else?)", c.opts.idle, remaining)
		case <-ctx.Done():
			return done, ctx.Err()
		}
		if m == nil {
			return done, fmt.Errorf("dead letters ended: %w", ctx.Err())
		}
		idle.Reset(c.opts.idle)
		if want[m.UUID] > 0 {
			if cmd == "replay" {
				if lim != nil {
					if err := lim.Wait(ctx); err != nil {
						m.Nack()
						return done, err
					}
				}
				topic, err := b.Replay(ctx, m)
				if err != nil {
					m.Nack()
					return done, err
				}
				fmt.Fprintf(c.stdout, "replayed %s to %s\n", m.UUID, topic)
			} else {
				fmt.Fprintf(c.stdout, "purged %s (reason %s)\n", m.UUID, dash(m.Metadata.Get(middleware.KeyDLQReason)))
			}
			want[m.UUID]--
			remaining--
			done++
		} else {
			if err := b.Publish(ctx, c.cfg.DeadLetterTopic, keepCopy(m)); err != nil {
				m.Nack()
				return done, fmt.Errorf("move %s to the end of the backlog: %w", m.UUID, err)
			}
			fmt.Fprintf(c.stdout, "kept %s (not selected; moved to the end of the backlog)\n", m.UUID)
		}
		m.Ack()
	}
	if remaining > 0 {
		return done, fmt.Errorf("%d selected dead letter%s not found in the backlog (consumed by someone else?)", remaining, plural(remaining))
	}
	// The subscriber settles an ack on its own goroutine, and both
	// watermill-kafka and the RabbitMQ subscriber drop an ack that races
	// with the end of the subscription (the message would come back). The
	// next delivery proves the last ack was settled (subscriptions hand out
	// the next message only then); it is left unsettled and goes back to
	// the backlog when the subscription ends. Without one, wait ackGrace.
	grace := time.NewTimer(ackGrace)
	defer grace.Stop()
	select {
	case <-ch:
	case <-grace.C:
	case <-ctx.Done():
	}
	return done, nil
}

// ackGrace is how long consume lets the subscriber settle its last ack
// before the subscription ends, when no further message shows it did.
const ackGrace = time.Second

// keepCopy is a dead letter to publish again to the dead-letter topic: same
// UUID, payload and metadata (the broker adapters drop their per-delivery
// keys when publishing).
func keepCopy(m *message.Message) *message.Message {
	cp := message.NewMessage(m.UUID, m.Payload)
	cp.Metadata = maps.Clone(m.Metadata)
	return cp
}

// parseRate parses "N/s" or "N" (per second).
func parseRate(s string) (rate.Limit, error) {
	v := strings.TrimSuffix(strings.TrimSpace(s), "/s")
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f <= 0 {
		return 0, fmt.Errorf("bad -rate %q: want a positive number per second, e.g. 10/s", s)
	}
	return rate.Limit(f), nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
