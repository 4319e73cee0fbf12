package middleware

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/schema"
)

// TestFusedStackMatchesComposed runs the same messages through the fused
// stack and through the composed chain of the steps' middlewares, in several
// configurations, and requires the same outcome for each: what the handler
// saw, what the stack returned, what was dead-lettered, and the message's
// context and metadata afterwards.
func TestFusedStackMatchesComposed(t *testing.T) {
	configs := map[string]func(*StackConfig, *fusedTestPublisher){
		"default":         func(*StackConfig, *fusedTestPublisher) {},
		"no-dead-letter":  func(c *StackConfig, _ *fusedTestPublisher) { c.DeadLetter.Publisher = nil },
		"no-retry":        func(c *StackConfig, _ *fusedTestPublisher) { c.Disable = StepRetry },
		"no-timeout":      func(c *StackConfig, _ *fusedTestPublisher) { c.Disable = StepTimeout | StepRecover },
		"no-dedup":        func(c *StackConfig, _ *fusedTestPublisher) { c.Disable = StepDedup | StepBreaker },
		"no-correlation":  func(c *StackConfig, _ *fusedTestPublisher) { c.Disable = StepCorrelation | StepNackDelay },
		"dlq-fails":       func(_ *StackConfig, p *fusedTestPublisher) { p.fail = true },
		"shared-memstore": func(c *StackConfig, _ *fusedTestPublisher) { c.Dedup.Store = NewMemoryStore(MemoryStoreConfig{}) },
	}
	ids := []string{
		"ok-1", "ok-1", "out-1", "flaky-1", "perm-1", "panic-1", "slow-1",
		"outerr-1", "cancel-1", "nocorr-1", "keyless-", "ok-2",
		"fail-1", "fail-2", "fail-3", "ok-3", "ok-4", "perm-1", "flaky-1", "out-1",
	}
	for name, set := range configs {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var got [2][]string
			for i, fuse := range []bool{true, false} {
				pub := &fusedTestPublisher{}
				cfg := StackConfig{
					Name:       "h",
					DeadLetter: DeadLetterConfig{Publisher: pub, Topic: "dlq"},
					Retry:      RetryConfig{MaxAttempts: 3, InitialInterval: time.Millisecond, RandomizationFactor: -1},
					Breaker:    BreakerConfig{ConsecutiveFailures: 2, OpenTimeout: 30 * time.Millisecond},
					Timeout:    20 * time.Millisecond,
					NackDelay:  NackDelayConfig{InitialDelay: time.Millisecond, MaxDelay: 2 * time.Millisecond},
					Dedup: DedupConfig{Key: func(m *message.Message) (string, error) {
						if m.UUID == "keyless-" {
							return "", nil
						}
						return m.UUID, nil
					}},
				}
				set(&cfg, pub)
				var log []string
				h := stack(cfg, fuse)(fusedTestHandler(&log))
				for _, id := range ids {
					log = append(log, runFusedTestMessage(h, id))
				}
				log = append(log, pub.String())
				got[i] = log
			}
			if !reflect.DeepEqual(got[0], got[1]) {
				for i := range max(len(got[0]), len(got[1])) {
					var a, b string
					if i < len(got[0]) {
						a = got[0][i]
					}
					if i < len(got[1]) {
						b = got[1][i]
					}
					if a != b {
						t.Errorf("fused:    %s\ncomposed: %s", a, b)
					}
				}
			}
		})
	}
}

type ctxKey struct{}

func runFusedTestMessage(h message.HandlerFunc, id string) string {
	msg := message.NewMessage(id, message.Payload("p-"+id))
	if !strings.HasPrefix(id, "nocorr") {
		msg.Metadata.Set(schema.KeyCorrelationID, "corr-"+id)
	}
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, id))
	defer cancel()
	if strings.HasPrefix(id, "cancel") {
		cancel()
	}
	msg.SetContext(ctx)
	out, err, panicked := func() (out []*message.Message, err error, panicked any) {
		defer func() { panicked = recover() }()
		out, err = h(msg)
		return out, err, nil
	}()
	var b strings.Builder
	if panicked != nil {
		fmt.Fprintf(&b, "panicked: %v ", panicked)
	}
	fmt.Fprintf(&b, "%s: err=%v type=%q redelivery=%v canceled=%v ctx-restored=%v md=%v out=[",
		id, err, errType(err), IsRedelivery(err), errors.Is(err, context.Canceled), msg.Context() == ctx, sortedMD(msg.Metadata))
	for _, m := range out {
		fmt.Fprintf(&b, "%s %v;", m.UUID, sortedMD(m.Metadata))
	}
	b.WriteString("]")
	return b.String()
}

func errType(err error) string {
	if err == nil {
		return ""
	}
	return ErrorType(err)
}

func fusedTestHandler(log *[]string) message.HandlerFunc {
	attempts := map[string]int{}
	return func(msg *message.Message) ([]*message.Message, error) {
		ctx := msg.Context()
		attempts[msg.UUID]++
		_, hasDeadline := ctx.Deadline()
		*log = append(*log, fmt.Sprintf("  call %s attempt=%d corr=%q cause=%q value=%v deadline=%v",
			msg.UUID, AttemptFromContext(ctx), CorrelationIDFromContext(ctx), CausationIDFromContext(ctx),
			ctx.Value(ctxKey{}), hasDeadline))
		id := msg.UUID
		produced := func() []*message.Message {
			m := message.NewMessage("child-of-"+id, nil)
			return []*message.Message{m}
		}
		switch {
		case strings.HasPrefix(id, "out"):
			return produced(), nil
		case strings.HasPrefix(id, "flaky"):
			if attempts[id] == 1 {
				return nil, errTestTransient
			}
			return produced(), nil
		case strings.HasPrefix(id, "perm"):
			return nil, Permanent(errors.New("bad input"))
		case strings.HasPrefix(id, "panic"):
			panic("boom")
		case strings.HasPrefix(id, "slow"):
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(40 * time.Millisecond): // no timeout step
				return nil, errTestTransient
			}
		case strings.HasPrefix(id, "outerr"):
			return produced(), errTestTransient
		case strings.HasPrefix(id, "cancel"):
			return nil, ctx.Err()
		case strings.HasPrefix(id, "fail"):
			return nil, errTestTransient
		}
		return nil, nil
	}
}

var errTestTransient = errors.New("transient")

func sortedMD(md message.Metadata) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(md)) {
		if k == KeyDLQFirstFailure || k == KeyDLQLastFailure {
			continue // times differ between runs
		}
		v := md[k]
		if k == KeyDLQError && strings.Contains(v, "goroutine") {
			v = v[:strings.Index(v, "goroutine")] // panic stacks differ
		}
		parts = append(parts, k+"="+v)
	}
	return strings.Join(parts, ",")
}

type fusedTestPublisher struct {
	fail bool
	log  []string
}

func (p *fusedTestPublisher) Publish(topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		p.log = append(p.log, fmt.Sprintf("dlq %s %s %s %s", topic, m.UUID, m.Payload, sortedMD(m.Metadata)))
	}
	if p.fail {
		return errors.New("dlq down")
	}
	return nil
}

func (p *fusedTestPublisher) Close() error { return nil }

func (p *fusedTestPublisher) String() string { return strings.Join(p.log, "\n") }
