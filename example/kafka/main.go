// Command kafka starts an in-process Kafka cluster (franz-go's kfake, a real
// Kafka wire-protocol broker) so that the example and the dead-letter CLI can
// run on Kafka without installing one. Given a command, it runs it with
// BUSLINE_BROKER=kafka and BUSLINE_KAFKA_BROKERS set to the cluster, and
// stops when the command ends, with its exit code: this works the same in
// a terminal and in a script (no background job to kill; "go run" does not
// pass a signal on to the program it built):
//
//	go run ./example/kafka go run ./example
//	go run ./example/kafka -- sh -c 'go run ./example && go run ./cmd/busline list'
//
// Without a command it prints the address it listens on and runs until
// SIGINT or SIGTERM. Topics are created on first use. Everything is kept in
// memory and lost when it stops.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/twmb/franz-go/pkg/kfake"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run starts the cluster, prints its address to stdout and serves until ctx
// ends. It returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("kafka", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:9092", "`host:port` to listen on (port 0: any free port)")
	partitions := fs.Int("partitions", 1, "partitions of topics created on first use")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: go run ./example/kafka [-addr host:port] [-partitions n] [command [args...]]\n\n"+
			"Starts an in-process Kafka broker (franz-go kfake) and runs until Ctrl-C or,\n"+
			"given a command, until the command (run with BUSLINE_BROKER=kafka and\n"+
			"BUSLINE_KAFKA_BROKERS set) exits.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *partitions < 1 {
		fmt.Fprintln(stderr, "kafka: -partitions must be at least 1")
		return 2
	}
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) { return net.Listen(network, *addr) }),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(*partitions),
	)
	if err != nil {
		fmt.Fprintln(stderr, "kafka:", err)
		return 1
	}
	defer c.Close()
	if fs.NArg() > 0 {
		return runCommand(ctx, fs.Args(), c.ListenAddrs()[0], stdout, stderr)
	}
	fmt.Fprintf(stdout, "kafka (kfake) listening on %s; Ctrl-C stops it\n", c.ListenAddrs()[0])
	fmt.Fprintf(stdout, "BUSLINE_BROKER=kafka BUSLINE_KAFKA_BROKERS=%s go run ./example\n", c.ListenAddrs()[0])
	<-ctx.Done()
	fmt.Fprintln(stdout, "kafka stopped")
	return 0
}

// runCommand runs args with the environment pointing the bus at the
// cluster at addr, and returns its exit code.
func runCommand(ctx context.Context, args []string, addr string, stdout, stderr io.Writer) int {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "BUSLINE_BROKER=kafka", "BUSLINE_KAFKA_BROKERS="+addr)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
	// On Ctrl-C the command gets the signal too (same process group);
	// SIGTERM then, so that it can shut down gracefully.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit) && exit.ExitCode() >= 0:
		return exit.ExitCode()
	}
	fmt.Fprintln(stderr, "kafka:", err)
	return 1
}
