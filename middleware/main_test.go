package middleware_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.uber.org/goleak"

	"github.com/busline/busline/middleware"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newMsg returns a message with a live context, as a subscriber delivers it.
func newMsg(uuid, payload string) *message.Message {
	msg := message.NewMessage(uuid, message.Payload(payload))
	msg.SetContext(context.Background())
	return msg
}

// recordingPublisher is a message.Publisher that keeps what it is given,
// or fails with err when set.
type recordingPublisher struct {
	mu   sync.Mutex
	err  error
	msgs map[string][]*message.Message
}

func (p *recordingPublisher) Publish(topic string, msgs ...*message.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	if p.msgs == nil {
		p.msgs = map[string][]*message.Message{}
	}
	p.msgs[topic] = append(p.msgs[topic], msgs...)
	return nil
}

func (p *recordingPublisher) Close() error { return nil }

func (p *recordingPublisher) topic(topic string) []*message.Message {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*message.Message(nil), p.msgs[topic]...)
}

var errTransient = errors.New("transient")

// ok is a no-op handler.
func ok(*message.Message) ([]*message.Message, error) { return nil, nil }

// observer is a middleware.Observer whose methods call the funcs set.
type observer struct {
	middleware.NopObserver
	retried      func(middleware.RetryInfo)
	deadLettered func(middleware.DeadLetterInfo)
	duplicate    func(middleware.DedupInfo)
	dedupWaited  func(middleware.DedupInfo)
	storeFailed  func(middleware.DedupInfo)
	throttled    func(middleware.ThrottleInfo)
	breaker      func(middleware.BreakerInfo)
}

func (o observer) Retried(i middleware.RetryInfo) {
	if o.retried != nil {
		o.retried(i)
	}
}

func (o observer) DeadLettered(i middleware.DeadLetterInfo) {
	if o.deadLettered != nil {
		o.deadLettered(i)
	}
}

func (o observer) Duplicate(i middleware.DedupInfo) {
	if o.duplicate != nil {
		o.duplicate(i)
	}
}

func (o observer) DedupWaited(i middleware.DedupInfo) {
	if o.dedupWaited != nil {
		o.dedupWaited(i)
	}
}

func (o observer) DedupStoreFailed(i middleware.DedupInfo) {
	if o.storeFailed != nil {
		o.storeFailed(i)
	}
}

func (o observer) Throttled(i middleware.ThrottleInfo) {
	if o.throttled != nil {
		o.throttled(i)
	}
}

func (o observer) BreakerChanged(i middleware.BreakerInfo) {
	if o.breaker != nil {
		o.breaker(i)
	}
}
