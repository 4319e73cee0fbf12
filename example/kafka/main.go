// Command kafka starts an in-process Kafka cluster (franz-go's kfake, a real
// Kafka wire-protocol broker) so that the example and the dead-letter CLI can
// run on Kafka without installing one:
//
//	go run ./example/kafka &
//	BUSLINE_BROKER=kafka BUSLINE_KAFKA_BROKERS=127.0.0.1:9092 go run ./example
//	BUSLINE_BROKER=kafka BUSLINE_KAFKA_BROKERS=127.0.0.1:9092 go run ./bus/cmd/busline list
//
// It prints the address it listens on and runs until SIGINT or SIGTERM.
// Topics are created on first use. Everything is kept in memory and lost
// when it stops.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
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
		fmt.Fprintf(stderr, "Usage: go run ./example/kafka [-addr host:port] [-partitions n]\n\n"+
			"Starts an in-process Kafka broker (franz-go kfake) and runs until Ctrl-C.\n\n")
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
	fmt.Fprintf(stdout, "kafka (kfake) listening on %s; Ctrl-C stops it\n", c.ListenAddrs()[0])
	fmt.Fprintf(stdout, "BUSLINE_BROKER=kafka BUSLINE_KAFKA_BROKERS=%s go run ./example\n", c.ListenAddrs()[0])
	<-ctx.Done()
	fmt.Fprintln(stdout, "kafka stopped")
	return 0
}
