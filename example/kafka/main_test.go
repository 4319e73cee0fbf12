package main

import (
	"bytes"
	"context"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	code := make(chan int, 1)
	go func() { code <- run(ctx, []string{"-addr", "127.0.0.1:0", "-partitions", "2"}, &stdout, &stderr) }()

	re := regexp.MustCompile(`listening on (127\.0\.0\.1:\d+)`)
	var addr string
	for deadline := time.Now().Add(10 * time.Second); addr == "" && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if m := re.FindStringSubmatch(stdout.String()); m != nil {
			addr = m[1]
		}
	}
	if addr == "" {
		t.Fatalf("no address printed; stdout %q, stderr %q", stdout.String(), stderr.String())
	}

	// A record produced to a new topic comes back.
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.AllowAutoTopicCreation(), kgo.ConsumeTopics("t"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
	defer pcancel()
	if err := cl.ProduceSync(pctx, &kgo.Record{Topic: "t", Value: []byte("hi")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	fetches := cl.PollFetches(pctx)
	if err := fetches.Err(); err != nil {
		t.Fatal(err)
	}
	if recs := fetches.Records(); len(recs) != 1 || string(recs[0].Value) != "hi" {
		t.Fatalf("records %v", recs)
	}

	cancel()
	if c := <-code; c != 0 {
		t.Fatalf("exit code %d, stderr %q", c, stderr.String())
	}
}

func TestBadFlags(t *testing.T) {
	var stdout, stderr syncBuffer
	if c := run(context.Background(), []string{"-partitions", "0"}, &stdout, &stderr); c != 2 {
		t.Errorf("exit code %d, want 2", c)
	}
}

// Given a command, run serves the cluster while the command runs, with the
// bus's environment pointing at it, and exits with the command's code: no
// background job to kill (issue 15: the README's block must work in a
// script).
func TestInteropRunCommand(t *testing.T) {
	var stdout, stderr syncBuffer
	script := `test "$BUSLINE_BROKER" = kafka && (exec 3<>/dev/tcp/${BUSLINE_KAFKA_BROKERS%:*}/${BUSLINE_KAFKA_BROKERS##*:}) && echo "reached $BUSLINE_KAFKA_BROKERS" && exit 3`
	code := run(context.Background(), []string{"-addr", "127.0.0.1:0", "bash", "-c", script}, &stdout, &stderr)
	if code != 3 {
		t.Fatalf("exit code %d, want the command's 3; stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	if !regexp.MustCompile(`reached 127\.0\.0\.1:\d+`).MatchString(stdout.String()) {
		t.Errorf("the command did not reach the cluster: stdout %q, stderr %q", stdout.String(), stderr.String())
	}
}
