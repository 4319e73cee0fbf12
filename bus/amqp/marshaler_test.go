package amqp_test

import (
	"encoding/json"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/bus/bustest"
	"github.com/busline/busline/schema"
)

// subscribeRaw prepares topic for group and returns the broker's
// subscription of it plus a plain amqp091-go channel to publish with.
func subscribeRaw(t *testing.T, prefix string) (topic string, msgs <-chan *message.Message, raw *amqp091.Channel) {
	t.Helper()
	tp := newTopology(t)
	b := newBroker(t, amqp.Config{})
	ctx := bustest.Context(t, wait)
	topic, group := tp.topic(prefix), tp.group("g")
	if err := b.Prepare(ctx, topic, group); err != nil {
		t.Fatal(err)
	}
	sub, err := b.Subscriber(group)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err = sub.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	return topic, msgs, rawChannel(t)
}

// A message from a non-Watermill producer with headers of every AMQP type,
// including a dead-lettering x-death table, is delivered (not nacked in a
// loop): typed values become strings, tables JSON, cloudEvents_ headers and
// the content_type property become ce_ keys and content-type, and the
// event id becomes the message UUID.
func TestUnmarshalToleratesForeignHeaders(t *testing.T) {
	t.Parallel()
	topic, msgs, raw := subscribeRaw(t, "foreign")
	when := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	err := raw.Publish(amqp.ExchangeName(topic), "", false, false, amqp091.Publishing{
		ContentType:   "application/json",
		CorrelationId: "corr-from-property",
		Body:          []byte(`{"a":1}`),
		Headers: amqp091.Table{
			"x-death": []any{amqp091.Table{
				"count":        int64(3),
				"reason":       "rejected",
				"queue":        "orders.billing",
				"time":         when,
				"exchange":     "orders",
				"routing-keys": []any{"rk"},
			}},
			"cloudEvents_id":          "evt-1",
			"cloudEvents_type":        "com.example.order.created",
			"cloudEvents_specversion": "1.0",
			"cloudEvents_time":        when,
			"cloudEvents_dataversion": int32(2),
			"attempts":                int32(42),
			"big":                     int64(-7),
			"flag":                    true,
			"ratio":                   1.5,
			"stamp":                   when,
			"raw":                     []byte("bytes"),
			"price":                   amqp091.Decimal{Scale: 2, Value: 12345},
			"nothing":                 nil,
		},
	})
	if err != nil {
		t.Fatal(err)
	}

	m := receive(t, msgs)
	defer m.Ack()
	if m.UUID != "evt-1" {
		t.Errorf("UUID %q, want the cloudEvents_id evt-1", m.UUID)
	}
	if string(m.Payload) != `{"a":1}` {
		t.Errorf("payload %q", m.Payload)
	}
	want := map[string]string{
		schema.KeyID:              "evt-1",
		schema.KeyType:            "com.example.order.created",
		schema.KeySpecVersion:     "1.0",
		schema.KeyTime:            "2026-03-04T05:06:07Z",
		schema.KeyDataVersion:     "2",
		schema.KeyDataContentType: "application/json",
		schema.KeyCorrelationID:   "corr-from-property",
		"attempts":                "42",
		"big":                     "-7",
		"flag":                    "true",
		"ratio":                   "1.5",
		"stamp":                   "2026-03-04T05:06:07Z",
		"raw":                     "bytes",
		"price":                   "123.45",
		"nothing":                 "",
		amqp.KeyExchange:          amqp.ExchangeName(topic),
		amqp.KeyRoutingKey:        "",
		amqp.KeyRedelivered:       "false",
	}
	for k, v := range want {
		got, ok := m.Metadata[k]
		if !ok || got != v {
			t.Errorf("metadata %s = %q (present %v), want %q", k, got, ok, v)
		}
	}
	for k := range m.Metadata {
		if strings.HasPrefix(k, "cloudEvents") {
			t.Errorf("metadata key %s kept its wire prefix", k)
		}
	}
	var death []map[string]any
	if err := json.Unmarshal([]byte(m.Metadata["x-death"]), &death); err != nil {
		t.Fatalf("x-death %q is not JSON: %v", m.Metadata["x-death"], err)
	}
	if len(death) != 1 || death[0]["reason"] != "rejected" || death[0]["count"] != float64(3) ||
		death[0]["time"] != "2026-03-04T05:06:07Z" {
		t.Errorf("x-death = %s", m.Metadata["x-death"])
	}
}

// The cloudEvents: prefix is accepted; without a Watermill UUID or event
// id the message_id property is the UUID; without any, a new one is made.
func TestUnmarshalIDsAndAltPrefix(t *testing.T) {
	t.Parallel()
	topic, msgs, raw := subscribeRaw(t, "altprefix")
	publish := func(p amqp091.Publishing) {
		t.Helper()
		if err := raw.Publish(amqp.ExchangeName(topic), "", false, false, p); err != nil {
			t.Fatal(err)
		}
	}
	publish(amqp091.Publishing{
		MessageId: "mid-1",
		Headers: amqp091.Table{
			"cloudEvents:type":   "com.example.alt",
			"cloudEvents:source": "/alt",
			// Both forms: the underscore one wins.
			"cloudEvents:subject": "colon",
			"cloudEvents_subject": "underscore",
		},
	})
	publish(amqp091.Publishing{Body: []byte("anonymous")})

	m := receive(t, msgs)
	m.Ack()
	if m.UUID != "mid-1" {
		t.Errorf("UUID %q, want the message_id mid-1", m.UUID)
	}
	for k, v := range map[string]string{
		schema.KeyType:    "com.example.alt",
		schema.KeySource:  "/alt",
		schema.KeySubject: "underscore",
	} {
		if m.Metadata[k] != v {
			t.Errorf("metadata %s = %q, want %q", k, m.Metadata[k], v)
		}
	}

	m = receive(t, msgs)
	m.Ack()
	if m.UUID == "" {
		t.Error("message without any id got an empty UUID")
	}
}

// A message published through the broker reaches a plain AMQP consumer in
// the CloudEvents AMQP binding: cloudEvents_ headers, the content_type
// property, persistent, the event id mirrored to message_id, transport keys dropped.
func TestMarshalWritesCloudEventsBinding(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	b := newBroker(t, amqp.Config{})
	topic, group := tp.topic("wire"), tp.group("raw")
	if err := b.Prepare(bustest.Context(t, wait), topic, group); err != nil {
		t.Fatal(err)
	}
	m := message.NewMessage(watermill.NewUUID(), []byte(`{"b":2}`))
	m.Metadata = message.Metadata{
		schema.KeyID:              "evt-9",
		schema.KeyType:            "com.example.order.paid",
		schema.KeySpecVersion:     "1.0",
		schema.KeyTime:            "2026-01-02T03:04:05.123Z",
		schema.KeyCorrelationID:   "corr-9",
		schema.KeyDataContentType: "application/json",
		"traceparent":             "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		amqp.KeyExchange:          "old-exchange",
		amqp.KeyRedelivered:       "true",
	}
	if err := b.Publisher().Publish(topic, m); err != nil {
		t.Fatal(err)
	}

	raw := rawChannel(t)
	deliveries, err := raw.Consume(amqp.QueueName(topic, group), "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	var d amqp091.Delivery
	select {
	case d = <-deliveries:
	case <-time.After(wait):
		t.Fatal("no delivery")
	}
	defer d.Ack(false)

	if d.ContentType != "application/json" {
		t.Errorf("content_type %q", d.ContentType)
	}
	if d.DeliveryMode != amqp091.Persistent {
		t.Errorf("delivery mode %d, want persistent", d.DeliveryMode)
	}
	if d.MessageId != "evt-9" || d.CorrelationId != "" {
		t.Errorf("message_id %q, correlation_id %q; want evt-9 and none", d.MessageId, d.CorrelationId)
	}
	if !d.Timestamp.Equal(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Errorf("timestamp %v", d.Timestamp)
	}
	want := amqp091.Table{
		"cloudEvents_id":            "evt-9",
		"cloudEvents_type":          "com.example.order.paid",
		"cloudEvents_specversion":   "1.0",
		"cloudEvents_time":          "2026-01-02T03:04:05.123Z",
		"cloudEvents_correlationid": "corr-9",
		"traceparent":               m.Metadata["traceparent"],
		"_watermill_message_uuid":   m.UUID,
	}
	for k, v := range want {
		if d.Headers[k] != v {
			t.Errorf("header %s = %#v, want %q", k, d.Headers[k], v)
		}
	}
	if len(d.Headers) != len(want) {
		t.Errorf("headers %v, want exactly %v", d.Headers, want)
	}
}

// What the receiver can tell from the event id is not sent: a message as
// the bus publishes it outside a handler (UUID, event id and correlation id
// all equal) carries the cloudEvents_id header and, for stock Watermill
// subscribers, the _watermill_message_uuid header, and arrives with its
// correlation id restored.
func TestMarshalLeavesImpliedIDsOff(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	b := newBroker(t, amqp.Config{})
	ctx := bustest.Context(t, wait)
	topic, rawGroup, group := tp.topic("implied"), tp.group("raw"), tp.group("bus")
	for _, g := range []string{rawGroup, group} {
		if err := b.Prepare(ctx, topic, g); err != nil {
			t.Fatal(err)
		}
	}
	id := watermill.NewUUID()
	m := message.NewMessage(id, []byte("x"))
	m.Metadata = message.Metadata{schema.KeyID: id, schema.KeyCorrelationID: id}
	if err := b.Publisher().Publish(topic, m); err != nil {
		t.Fatal(err)
	}

	raw := rawChannel(t)
	d, ok, err := raw.Get(amqp.QueueName(topic, rawGroup), true)
	if err != nil || !ok {
		t.Fatalf("Get: %v, %v", ok, err)
	}
	if want := (amqp091.Table{"cloudEvents_id": id, "_watermill_message_uuid": id}); !maps.Equal(d.Headers, want) {
		t.Errorf("headers %v, want %v", d.Headers, want)
	}
	if d.MessageId != id || d.CorrelationId != "" {
		t.Errorf("message_id %q, correlation_id %q; want %s and none", d.MessageId, d.CorrelationId, id)
	}

	_, msgs := subscribe(t, ctx, b, group, topic)
	got := receive(t, msgs)
	got.Ack()
	if got.UUID != id || got.Metadata[schema.KeyID] != id || got.Metadata[schema.KeyCorrelationID] != id {
		t.Errorf("UUID %q, metadata %v: want %s as UUID, ce_id and ce_correlationid", got.UUID, got.Metadata, id)
	}
}

// UUID, payload and metadata survive a trip through the broker.
func TestRoundTrip(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	b := newBroker(t, amqp.Config{})
	ctx := bustest.Context(t, wait)
	topic, group := tp.topic("roundtrip"), tp.group("g")
	if err := b.Prepare(ctx, topic, group); err != nil {
		t.Fatal(err)
	}
	sent := message.NewMessage(watermill.NewUUID(), []byte("payload"))
	sent.Metadata = message.Metadata{
		schema.KeyID:              "evt-rt",
		schema.KeyType:            "com.example.rt",
		schema.KeyDataContentType: "text/plain",
		"traceparent":             "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"busline_attempt":         "2",
	}
	if err := b.Publisher().Publish(topic, sent); err != nil {
		t.Fatal(err)
	}
	_, msgs := subscribe(t, ctx, b, group, topic)
	got := receive(t, msgs)
	got.Ack()
	if got.UUID != sent.UUID {
		t.Errorf("UUID %q, want %q", got.UUID, sent.UUID)
	}
	if string(got.Payload) != "payload" {
		t.Errorf("payload %q", got.Payload)
	}
	for k, v := range sent.Metadata {
		if got.Metadata[k] != v {
			t.Errorf("metadata %s = %q, want %q", k, got.Metadata[k], v)
		}
	}
	if _, ok := got.Metadata["_watermill_message_uuid"]; ok {
		t.Error("the UUID header leaked into metadata")
	}
}
