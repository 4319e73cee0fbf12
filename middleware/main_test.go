package middleware_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.uber.org/goleak"
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
