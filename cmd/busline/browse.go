package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/busline/busline/bus"
	"github.com/busline/busline/bus/amqp"
	"github.com/busline/busline/schema"
)

// Browsing reads the dead-letter backlog without consuming it: list, show
// and the selection of replay and purge work on such a snapshot. The bus's
// own Bus.DeadLetters cannot do that: it consumes as the group, and a
// message it does not ack either blocks the rest (a Kafka nack blocks its
// partition and comes back) or comes back first again (a RabbitMQ requeue).
//
// Both readers map the wire format to Watermill metadata the way the bus's
// broker adapters do (see bus/kafka and bus/amqp, "Wire format"), so that
// the ids and keys seen here are the ones Bus.DeadLetters delivers.

// uuidHeader carries the Watermill message UUID on Kafka and RabbitMQ.
const uuidHeader = "_watermill_message_uuid"

// browseIdle bounds the wait for the next record while reading a backlog
// whose end is known: the reader never blocks for ever on a gap.
const browseIdle = 3 * time.Second

// browse returns the dead letters waiting for the group bus.DeadLetterGroup
// on cfg's dead-letter topic, oldest first, without consuming them.
func browse(ctx context.Context, cfg bus.Config) ([]*message.Message, error) {
	switch cfg.Broker {
	case bus.BrokerKafka:
		return browseKafka(ctx, cfg, bus.DeadLetterGroup)
	case bus.BrokerAMQP:
		return browseAMQP(ctx, cfg, bus.DeadLetterGroup)
	}
	return nil, errMemory
}

// browseKafka reads the dead-letter topic with a plain franz-go consumer
// (no group, nothing committed) from the group's committed offsets (the
// partition's start when it has none, as the bus's groups start at the
// oldest record) up to each partition's last stable offset at the start,
// read_committed.
func browseKafka(ctx context.Context, cfg bus.Config, group string) ([]*message.Message, error) {
	topic := cfg.DeadLetterTopic
	opts, err := kgoOptions(cfg)
	if err != nil {
		return nil, err
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	// The last stable offsets, and read_committed below: dead letters of
	// handlers with Kafka transactions are published inside the
	// transaction, and those of aborted transactions are not dead letters.
	ends, err := adm.ListCommittedOffsets(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("end offsets of %s: %w", topic, err)
	}
	starts, err := adm.ListStartOffsets(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("start offsets of %s: %w", topic, err)
	}
	committed, err := adm.FetchOffsets(ctx, group)
	if err != nil && !errors.Is(err, kerr.GroupIDNotFound) {
		return nil, fmt.Errorf("offsets of group %s: %w", group, err)
	}
	from := map[int32]kgo.Offset{}
	until := map[int32]int64{}
	var ferr error
	ends.Each(func(e kadm.ListedOffset) {
		if e.Err != nil {
			if !errors.Is(e.Err, kerr.UnknownTopicOrPartition) {
				ferr = errors.Join(ferr, fmt.Errorf("%s/%d: %w", topic, e.Partition, e.Err))
			}
			return
		}
		at := int64(0)
		if s, ok := starts.Lookup(topic, e.Partition); ok && s.Err == nil {
			at = s.Offset
		}
		if c, ok := committed.Lookup(topic, e.Partition); ok && c.Err == nil && c.At >= 0 {
			at = max(at, c.At)
		} else if strings.EqualFold(cfg.Kafka.InitialOffset, "newest") {
			at = e.Offset
		}
		if at < e.Offset {
			from[e.Partition] = kgo.NewOffset().At(at)
			until[e.Partition] = e.Offset
		}
	})
	if ferr != nil {
		return nil, ferr
	}
	if len(from) == 0 {
		return nil, nil
	}
	cons, err := kgo.NewClient(append(opts, kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: from}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()))...)
	if err != nil {
		return nil, fmt.Errorf("kafka consumer: %w", err)
	}
	defer cons.Close()
	byPart := map[int32][]*message.Message{}
	for len(until) > 0 {
		pctx, cancel := context.WithTimeout(ctx, browseIdle)
		fetches := cons.PollFetches(pctx)
		cancel()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if pctx.Err() != nil && fetches.NumRecords() == 0 {
			break // a gap (control records) or a trimmed end: nothing more to read
		}
		var errs []error
		fetches.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.DeadlineExceeded) {
				errs = append(errs, fmt.Errorf("fetch %s/%d: %w", t, p, err))
			}
		})
		if err := errors.Join(errs...); err != nil {
			return nil, err
		}
		fetches.EachRecord(func(r *kgo.Record) {
			end, ok := until[r.Partition]
			if !ok || r.Offset >= end {
				return
			}
			byPart[r.Partition] = append(byPart[r.Partition], kafkaMessage(r))
			if r.Offset+1 >= end {
				delete(until, r.Partition)
			}
		})
	}
	parts := make([]int32, 0, len(byPart))
	for p := range byPart {
		parts = append(parts, p)
	}
	slices.Sort(parts)
	var out []*message.Message
	for _, p := range parts {
		out = append(out, byPart[p]...)
	}
	return out, nil
}

// kafkaMessage maps a record like the bus's Kafka unmarshaler: headers
// become metadata; the UUID is the _watermill_message_uuid header, else
// ce_id, else "kafka:<topic>/<partition>/<offset>"; an implied correlation
// id is restored.
func kafkaMessage(r *kgo.Record) *message.Message {
	md := message.Metadata{}
	id := ""
	for _, h := range r.Headers {
		if h.Key == uuidHeader {
			id = string(h.Value)
			continue
		}
		md[h.Key] = string(h.Value)
	}
	if id == "" {
		id = md[schema.KeyID]
	}
	if id == "" {
		id = "kafka:" + r.Topic + "/" + strconv.Itoa(int(r.Partition)) + "/" + strconv.FormatInt(r.Offset, 10)
	}
	if len(r.Key) > 0 && md[schema.KeyPartitionKey] == "" {
		md[schema.KeyPartitionKey] = string(r.Key)
	}
	schema.RestoreCorrelation(md)
	m := message.NewMessage(id, r.Value)
	m.Metadata = md
	return m
}

// kgoOptions configures a franz-go client like the bus's Kafka broker
// (seed brokers, TLS, SASL), with the client id suffixed "-cli".
func kgoOptions(cfg bus.Config) ([]kgo.Opt, error) {
	k := cfg.Kafka
	if k.ClientID == "" {
		k.ClientID = "busline"
	}
	k.ClientID += "-cli"
	return k.ClientOptions()
}

// browseAMQP reads the group's dead-letter queue with basic.get and manual
// acks, holding every delivery, then gives them all back with one
// nack(multiple, requeue): RabbitMQ puts requeued messages back at their
// original positions, so the queue is as it was (the messages are marked
// redelivered). It reads at most the queue's depth at the start.
func browseAMQP(ctx context.Context, cfg bus.Config, group string) ([]*message.Message, error) {
	queue := cfg.DeadLetterTopic + "." + group // amqp.QueueName
	type result struct {
		msgs []*message.Message
		err  error
	}
	conn, err := dialAMQP(cfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	done := make(chan result, 1)
	go func() { // amqp091-go takes no context; closing conn ends this
		msgs, err := getAll(conn, queue)
		done <- result{msgs, err}
	}()
	select {
	case r := <-done:
		return r.msgs, r.err
	case <-ctx.Done():
		conn.Close()
		<-done
		return nil, ctx.Err()
	}
}

func getAll(conn *amqp091.Connection, queue string) ([]*message.Message, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		var aerr *amqp091.Error
		if errors.As(err, &aerr) && aerr.Code == amqp091.NotFound {
			return nil, nil // no dead-letter queue yet: no dead letters
		}
		return nil, fmt.Errorf("queue %s: %w", queue, err)
	}
	var out []*message.Message
	var last uint64
	for range q.Messages {
		d, ok, err := ch.Get(queue, false)
		if err != nil {
			return nil, fmt.Errorf("get from %s: %w", queue, err)
		}
		if !ok {
			break
		}
		last = d.DeliveryTag
		out = append(out, amqpMessage(d))
	}
	if last != 0 {
		if err := ch.Nack(last, true, true); err != nil {
			return nil, fmt.Errorf("give back the deliveries of %s: %w", queue, err)
		}
	}
	return out, nil
}

// amqpMessage maps a delivery like the bus's RabbitMQ unmarshaler.
func amqpMessage(d amqp091.Delivery) *message.Message {
	md := amqp.FromHeaders(d.Headers, d.ContentType)
	id := md[uuidHeader]
	delete(md, uuidHeader)
	for _, alt := range []string{md[schema.KeyID], d.MessageId} {
		if id == "" {
			id = alt
		}
	}
	if md[schema.KeyCorrelationID] == "" && d.CorrelationId != "" {
		md[schema.KeyCorrelationID] = d.CorrelationId
	}
	schema.RestoreCorrelation(md)
	m := message.NewMessage(id, d.Body)
	m.Metadata = md
	return m
}

// dialAMQP connects like the bus's RabbitMQ broker (TLS from cfg.AMQP.TLS).
func dialAMQP(cfg bus.Config) (*amqp091.Connection, error) {
	tlsCfg, err := cfg.AMQP.TLS.Load()
	if err != nil {
		return nil, fmt.Errorf("amqp TLS: %w", err)
	}
	uri := cfg.AMQP.URL
	if tlsCfg != nil {
		u, err := url.Parse(uri)
		if err != nil {
			return nil, fmt.Errorf("amqp URL: %w", err)
		}
		if u.Scheme == "amqp" {
			u.Scheme = "amqps"
			if u.Port() == "" {
				u.Host = net.JoinHostPort(u.Hostname(), "5671")
			}
		}
		uri = u.String()
	}
	props := amqp091.NewConnectionProperties()
	props.SetClientConnectionName("busline-cli")
	conn, err := amqp091.DialConfig(uri, amqp091.Config{
		Properties:      props,
		TLSClientConfig: tlsCfg,
		Dial:            amqp091.DefaultDial(10 * time.Second),
	})
	if err != nil {
		return nil, fmt.Errorf("amqp: connect: %w", err)
	}
	return conn, nil
}
