package middleware_test

import (
	"context"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/middleware"
	"github.com/busline/busline/schema"
)

func TestCorrelationStartsIDWhenAbsent(t *testing.T) {
	msg := newMsg("m1", "x")
	var gotCorr, gotCause string
	h := middleware.Correlation()(func(m *message.Message) ([]*message.Message, error) {
		gotCorr = middleware.CorrelationIDFromContext(m.Context())
		gotCause = middleware.CausationIDFromContext(m.Context())
		return []*message.Message{message.NewMessage("out1", nil)}, nil
	})
	out, err := h(msg)
	if err != nil {
		t.Fatal(err)
	}
	if gotCorr != "m1" || gotCause != "m1" {
		t.Errorf("ctx correlation=%q causation=%q, want m1, m1", gotCorr, gotCause)
	}
	if _, ok := msg.Metadata[schema.KeyCorrelationID]; ok {
		t.Errorf("incoming message got %s %q: it must stay as it came", schema.KeyCorrelationID, msg.Metadata[schema.KeyCorrelationID])
	}
	if got := out[0].Metadata.Get(schema.KeyCorrelationID); got != "m1" {
		t.Errorf("produced correlation = %q, want m1", got)
	}
	if got := out[0].Metadata.Get(schema.KeyCausationID); got != "m1" {
		t.Errorf("produced causation = %q, want m1", got)
	}
	if middleware.CorrelationIDFromContext(msg.Context()) != "" {
		t.Error("message context not restored after the handler")
	}
}

func TestCorrelationKeepsIncomingID(t *testing.T) {
	msg := newMsg("m2", "x")
	msg.Metadata.Set(schema.KeyCorrelationID, "c0")
	keep := message.NewMessage("out2", nil)
	keep.Metadata.Set(schema.KeyCausationID, "explicit")
	h := middleware.Correlation()(func(m *message.Message) ([]*message.Message, error) {
		if got := middleware.CorrelationIDFromContext(m.Context()); got != "c0" {
			t.Errorf("ctx correlation = %q, want c0", got)
		}
		return []*message.Message{message.NewMessage("out1", nil), keep}, nil
	})
	out, err := h(msg)
	if err != nil {
		t.Fatal(err)
	}
	if got := out[0].Metadata.Get(schema.KeyCorrelationID); got != "c0" {
		t.Errorf("produced correlation = %q, want c0", got)
	}
	if got := out[0].Metadata.Get(schema.KeyCausationID); got != "m2" {
		t.Errorf("produced causation = %q, want m2", got)
	}
	if got := out[1].Metadata.Get(schema.KeyCausationID); got != "explicit" {
		t.Errorf("explicit causation overwritten: %q", got)
	}
}

func TestPropagate(t *testing.T) {
	// At the edge: a new correlation starts at the message itself.
	edge := message.NewMessage("e1", nil)
	middleware.Propagate(context.Background(), edge)
	if got := edge.Metadata.Get(schema.KeyCorrelationID); got != "e1" {
		t.Errorf("edge correlation = %q, want e1", got)
	}
	if got := edge.Metadata.Get(schema.KeyCausationID); got != "" {
		t.Errorf("edge causation = %q, want none", got)
	}

	// Inside a handler: ids come from the context.
	var inner *message.Message
	h := middleware.Correlation()(func(m *message.Message) ([]*message.Message, error) {
		inner = message.NewMessage("p1", nil)
		middleware.Propagate(m.Context(), inner, nil)
		return nil, nil
	})
	in := newMsg("h1", "")
	in.Metadata.Set(schema.KeyCorrelationID, "corr")
	if _, err := h(in); err != nil {
		t.Fatal(err)
	}
	if got := inner.Metadata.Get(schema.KeyCorrelationID); got != "corr" {
		t.Errorf("published correlation = %q, want corr", got)
	}
	if got := inner.Metadata.Get(schema.KeyCausationID); got != "h1" {
		t.Errorf("published causation = %q, want h1", got)
	}

	// Existing ids are kept.
	own := message.NewMessage("o1", nil)
	own.Metadata.Set(schema.KeyCorrelationID, "mine")
	middleware.Propagate(middleware.ContextWithCorrelation(context.Background(), "ctx", "parent"), own)
	if got := own.Metadata.Get(schema.KeyCorrelationID); got != "mine" {
		t.Errorf("kept correlation = %q, want mine", got)
	}
	if got := own.Metadata.Get(schema.KeyCausationID); got != "parent" {
		t.Errorf("causation = %q, want parent", got)
	}
}

func TestPropagateDoesNotAllocate(t *testing.T) {
	ctx := middleware.ContextWithCorrelation(context.Background(), "corr", "parent")
	msg := message.NewMessage("p", nil)
	allocs := testing.AllocsPerRun(100, func() {
		clear(msg.Metadata)
		middleware.Propagate(ctx, msg)
	})
	if allocs != 0 {
		t.Errorf("Propagate allocates %v times per call", allocs)
	}
}
