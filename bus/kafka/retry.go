package kafka

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/busline/busline/bus/broker"
)

// retryDueHeader carries the time a record of a retry topic is due, in
// unix milliseconds of the redelivering process's clock. The subscriber
// hands the record out no earlier.
const retryDueHeader = "busline_retry_due"

// RetryTopic returns the name of the retry topic of group on topic for
// delay: "<topic>.<group>.retry.<delay>", the delay as
// [time.Duration.String] prints it ("orders.svc.h.retry.10s",
// "orders.svc.h.retry.1m0s").
func RetryTopic(topic, group string, delay time.Duration) string {
	return retryPrefix(topic, group) + delay.String()
}

// retryPrefix is what every retry topic of group on topic starts with.
func retryPrefix(topic, group string) string { return topic + "." + group + ".retry." }

// retryTopicDelay returns the delay of name, a retry topic of group on
// topic (see [RetryTopic]), and false when name is not one.
func retryTopicDelay(name, topic, group string) (time.Duration, bool) {
	v, ok := strings.CutPrefix(name, retryPrefix(topic, group))
	if !ok {
		return 0, false
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 || RetryTopic(topic, group, d) != name {
		return 0, false
	}
	return d, true
}

// validRetryDelays reports what is wrong with delays as the retry tiers of
// a handler: each must be positive, whole milliseconds (the due time's
// unit; "µs" would also not be a legal topic name) and given once.
func validRetryDelays(delays []time.Duration) error {
	if err := broker.ValidateDelays(delays); err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	return nil
}

// ensureRetryTopics creates, unless they exist, the retry topics of group
// on topic for delays, each with as many partitions as topic (creating
// topic first, as Prepare does, when it does not exist yet).
//
// As many partitions as the topic: a retry tier then has the parallelism
// of the topic it serves (one partition would put every redelivered record
// of the group on one member, one at a time in "partition" ordering), and
// a keyed record lands on the same partition number as on the topic, so
// that within a tier the records of one key stay in order.
func (b *Broker) ensureRetryTopics(ctx context.Context, topic, group string, delays []time.Duration) error {
	if err := b.Prepare(ctx, topic, group); err != nil {
		return err
	}
	tds, err := b.admin.ListTopics(ctx, topic)
	if err != nil {
		return fmt.Errorf("kafka: describe topic %s: %w", topic, err)
	}
	td, ok := tds[topic]
	if !ok || td.Err != nil || len(td.Partitions) == 0 {
		return fmt.Errorf("kafka: describe topic %s: %w", topic, cmpErr(td.Err, kerr.UnknownTopicOrPartition))
	}
	n := int32(len(td.Partitions))
	for _, d := range delays {
		rt := RetryTopic(topic, group, d)
		_, err := b.admin.CreateTopic(ctx, n, b.cfg.ReplicationFactor, nil, rt)
		if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("kafka: create retry topic %s: %w", rt, err)
		}
	}
	return nil
}

// retryTiers returns the retry topics a subscription of group on topic
// reads, with their delays: those of delays, created unless they exist
// (ensureRetryTopics), and every existing tier of a delay no longer
// configured (see oldTiers).
//
// Without delays the subscription needs no broker to start, as before there
// were tiers to find: when the brokers cannot list the topics, it is logged
// and the subscription reads none (they keep their records for the next
// one). With delays the error is returned, as creating them fails too.
func (b *Broker) retryTiers(ctx context.Context, topic, group string, delays []time.Duration) (map[string]time.Duration, error) {
	tiers := make(map[string]time.Duration, len(delays))
	for _, d := range delays {
		tiers[RetryTopic(topic, group, d)] = d
	}
	if len(delays) > 0 {
		if err := b.ensureRetryTopics(ctx, topic, group, delays); err != nil {
			return nil, err
		}
	}
	err := b.oldTiers(ctx, topic, group, tiers)
	if err != nil && len(delays) == 0 {
		b.logger.Error("kafka: retry topics of earlier delays not read", err,
			watermill.LogFields{"topic": topic, "consumer_group": group})
		return nil, nil
	}
	return tiers, err
}

// oldTiers adds to tiers the existing retry topics of group on topic whose
// delays it lacks (records may wait there since the delays changed or were
// removed). With InitialOffset "newest", the group's offset on such a tier
// is set to the tier's start where it has none (commitRetryStarts; a group
// with members running refuses it, which the bus's Redeliverer did for the
// tier when it was created).
//
// Names are ambiguous when topics or groups contain dots: the tiers of
// topic "a" and group "b.c" and those of topic "a.b" and group "c" are
// both "a.b.c.retry.<delay>". When a topic other than topic exists whose
// name could start such a prefix (a.b, here), no tier is taken: it may be
// another handler's.
func (b *Broker) oldTiers(ctx context.Context, topic, group string, tiers map[string]time.Duration) error {
	tds, err := b.admin.ListTopics(ctx)
	if err != nil {
		return fmt.Errorf("kafka: list the retry topics of %s on %s: %w", group, topic, err)
	}
	var old []string
	for name := range tds {
		if d, ok := retryTopicDelay(name, topic, group); ok && tiers[name] == 0 {
			old = append(old, name)
			tiers[name] = d
		}
	}
	if len(old) == 0 {
		return nil
	}
	base := topic + "." + group
	for i := range len(base) {
		if other := base[:i]; base[i] == '.' && other != topic && tds.Has(other) {
			for _, name := range old {
				delete(tiers, name)
			}
			b.logger.Info("kafka: retry topics of earlier delays not read: their names may be another handler's",
				watermill.LogFields{"topic": topic, "consumer_group": group, "other_topic": other, "retry_topics": old})
			return nil
		}
	}
	if b.cfg.InitialOffset == "newest" {
		if err := b.commitRetryStarts(ctx, group, old); err != nil {
			return fmt.Errorf("kafka: retry topics of %s: %w", group, err)
		}
	}
	return nil
}

func cmpErr(err, fallback error) error {
	if err != nil {
		return err
	}
	return fallback
}

// Redeliverer creates (idempotently) one retry topic per delay for group
// on topic ([RetryTopic]; as many partitions as topic, which it creates
// too when missing) and returns what moves a message of that handler to
// one of them. A subscriber of group with [broker.SubscriberOptions].RetryDelays
// equal to delays consumes them and hands each record back to the handler
// once it is due (see the package doc, "Delayed redelivery").
//
// Redeliver writes msg (its UUID, metadata and payload, as the publisher
// writes them, and so its record key) to the retry topic of delay, with
// the header busline_retry_due set to now+delay in unix milliseconds, and
// returns once all in-sync replicas have it (acks=all), or with the error.
// A delay that is not one of delays is an error; so is a ctx that is done
// before the record went out. Once handed to the producer, the record is
// not withdrawn when ctx ends (the producer is shared; see
// [Broker.Publisher]), so Redeliver takes at most about 30s. msg itself is
// not changed. Redeliver is safe for concurrent use.
//
// delays must be positive, whole milliseconds and distinct. Redeliverer
// fails when the topics cannot be created within 15s.
func (b *Broker) Redeliverer(topic, group string, delays []time.Duration) (interface {
	Redeliver(ctx context.Context, msg *message.Message, delay time.Duration) error
}, error) {
	if group == "" {
		return nil, errors.New("kafka: empty consumer group")
	}
	if len(delays) == 0 {
		return nil, errors.New("kafka: no retry delays")
	}
	if err := validRetryDelays(delays); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	if err := b.ensureRetryTopics(ctx, topic, group, delays); err != nil {
		return nil, err
	}
	r := &redeliverer{pub: b.pub, topics: make(map[time.Duration]string, len(delays))}
	var topics []string
	for _, d := range delays {
		r.topics[d] = RetryTopic(topic, group, d)
		topics = append(topics, r.topics[d])
	}
	if b.cfg.InitialOffset == "newest" {
		if err := b.commitRetryStarts(ctx, group, topics); err != nil {
			return nil, fmt.Errorf("kafka: retry topics of %s: %w", group, err)
		}
	}
	return r, nil
}

// commitRetryStarts commits, for group, the start of every partition of
// topics where the group has committed nothing yet. A retry topic must be
// read from its start whatever Config.InitialOffset says: with "newest", a
// record held when the group's only member died (held records are never
// committed) would otherwise be skipped by the restarted member. The
// commit needs the group to have no live member; when it has one, that
// member committed (or is about to commit) positions of its own, and the
// error is ignored.
func (b *Broker) commitRetryStarts(ctx context.Context, group string, topics []string) error {
	committed, err := b.admin.FetchOffsets(ctx, group)
	if err != nil && !errors.Is(err, kerr.GroupIDNotFound) { // a new group has committed nothing
		return err
	}
	starts, err := b.admin.ListStartOffsets(ctx, topics...)
	if err != nil {
		return err
	}
	todo := kadm.Offsets{}
	starts.Each(func(o kadm.ListedOffset) {
		if _, ok := committed.Lookup(o.Topic, o.Partition); !ok && o.Err == nil {
			todo.Add(kadm.Offset{Topic: o.Topic, Partition: o.Partition, At: o.Offset, LeaderEpoch: -1})
		}
	})
	if len(todo) == 0 {
		return nil
	}
	resp, err := b.admin.CommitOffsets(ctx, group, todo)
	if err != nil {
		return err
	}
	_ = resp.Error() // a live member's group refuses: see above
	return nil
}

// redeliverer moves messages of one handler to its retry topics.
type redeliverer struct {
	pub    *publisher
	topics map[time.Duration]string // delay -> retry topic
}

// Redeliver implements the method of [Broker.Redeliverer]'s result.
func (r *redeliverer) Redeliver(ctx context.Context, msg *message.Message, delay time.Duration) error {
	rt, ok := r.topics[delay]
	if !ok {
		return fmt.Errorf("kafka: redeliver: %v is not a retry delay of this handler", delay)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("kafka: redeliver: %w", err)
	}
	// A copy with a context of its own: the publisher would take msg's
	// context for a transaction's, and msg stays as the handler saw it.
	m := msg.Copy()
	// Rounded up to the millisecond: never due before now+delay.
	due := (time.Now().Add(delay).UnixNano() + int64(time.Millisecond) - 1) / int64(time.Millisecond)
	m.Metadata.Set(retryDueHeader, strconv.FormatInt(due, 10))
	if err := r.pub.Publish(rt, m); err != nil {
		return fmt.Errorf("kafka: redeliver to %s: %w", rt, err)
	}
	return nil
}

// retryDue returns when rec, a record of the retry topic of delay, is due:
// its busline_retry_due header, but no later than its timestamp plus delay
// (plus a millisecond: the timestamp is truncated to milliseconds, the due
// time rounded up), so that a broken header or a clock far ahead cannot
// hold a partition longer than its delay. A record without a readable
// header is due at once (it cannot be held for a time nobody knows).
func retryDue(rec *kgo.Record, delay time.Duration) time.Time {
	for i := len(rec.Headers) - 1; i >= 0; i-- { // the last one counts, as in unmarshalRecord
		h := rec.Headers[i]
		if h.Key != retryDueHeader {
			continue
		}
		ms, err := strconv.ParseInt(string(h.Value), 10, 64)
		if err != nil {
			return time.Time{}
		}
		due := time.UnixMilli(ms)
		if !rec.Timestamp.IsZero() {
			if latest := rec.Timestamp.Add(delay + time.Millisecond); due.After(latest) {
				return latest
			}
		}
		return due
	}
	return time.Time{}
}
