package kafka

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/busline/busline/bus/broker"
)

// browseIdle bounds the wait for the next record while reading a backlog
// whose end is known: Browse never blocks for ever on a gap.
const browseIdle = 3 * time.Second

// Browse returns the records of topic that group has not committed yet,
// oldest first per partition (partitions in order), mapped as the
// subscribers map them, without consuming them: a plain consumer of its
// own (no group, nothing committed) reads from the group's committed
// offsets (the partition's start when it has none, or its end when
// Config.InitialOffset is "newest") up to each partition's last stable
// offset at the start, read_committed, since records of aborted
// transactions were never delivered. It serves the dead-letter tool's list
// and show.
func (b *Broker) Browse(ctx context.Context, topic, group string) ([]*message.Message, error) {
	if b.isClosed() {
		return nil, broker.ErrClosed
	}
	from, until, err := b.browseRange(ctx, topic, group)
	if err != nil || len(from) == 0 {
		return nil, err
	}
	opts, err := b.cfg.kgoOptions()
	if err != nil {
		return nil, err
	}
	cons, err := kgo.NewClient(append(opts, kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: from}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()))...)
	if err != nil {
		return nil, fmt.Errorf("kafka: consumer: %w", err)
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
				errs = append(errs, fmt.Errorf("kafka: fetch %s/%d: %w", t, p, err))
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
			byPart[r.Partition] = append(byPart[r.Partition], unmarshalRecord(r))
			if r.Offset+1 >= end {
				delete(until, r.Partition)
			}
		})
	}
	var out []*message.Message
	for _, p := range slices.Sorted(maps.Keys(byPart)) {
		out = append(out, byPart[p]...)
	}
	return out, nil
}

// browseRange returns, per partition of topic with records waiting for
// group, the offset to read from and the last stable offset to read up to.
func (b *Broker) browseRange(ctx context.Context, topic, group string) (map[int32]kgo.Offset, map[int32]int64, error) {
	ends, err := b.admin.ListCommittedOffsets(ctx, topic)
	if err != nil {
		return nil, nil, fmt.Errorf("kafka: end offsets of %s: %w", topic, err)
	}
	starts, err := b.admin.ListStartOffsets(ctx, topic)
	if err != nil {
		return nil, nil, fmt.Errorf("kafka: start offsets of %s: %w", topic, err)
	}
	committed, err := b.admin.FetchOffsets(ctx, group)
	if err != nil && !errors.Is(err, kerr.GroupIDNotFound) {
		return nil, nil, fmt.Errorf("kafka: offsets of group %s: %w", group, err)
	}
	from := map[int32]kgo.Offset{}
	until := map[int32]int64{}
	var ferr error
	ends.Each(func(e kadm.ListedOffset) {
		if e.Err != nil {
			if !errors.Is(e.Err, kerr.UnknownTopicOrPartition) {
				ferr = errors.Join(ferr, fmt.Errorf("kafka: %s/%d: %w", topic, e.Partition, e.Err))
			}
			return
		}
		at := int64(0)
		if s, ok := starts.Lookup(topic, e.Partition); ok && s.Err == nil {
			at = s.Offset
		}
		if c, ok := committed.Lookup(topic, e.Partition); ok && c.Err == nil && c.At >= 0 {
			at = max(at, c.At)
		} else if strings.EqualFold(b.cfg.InitialOffset, "newest") {
			at = e.Offset
		}
		if at < e.Offset {
			from[e.Partition] = kgo.NewOffset().At(at)
			until[e.Partition] = e.Offset
		}
	})
	return from, until, ferr
}
