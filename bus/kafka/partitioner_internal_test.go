package kafka

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/busline/busline/schema"
)

// saramaPartition is where Sarama's partitioner p puts key among n
// partitions.
func saramaPartition(t *testing.T, p sarama.Partitioner, key string, n int) int {
	t.Helper()
	got, err := p.Partition(&sarama.ProducerMessage{Key: sarama.StringEncoder(key)}, int32(n))
	if err != nil {
		t.Fatal(err)
	}
	return int(got)
}

// The "sarama" partitioner puts every key where Sarama's default
// partitioner does, and "crc32" where librdkafka's default
// (consistent_random, Sarama's NewConsistentCRCHashPartitioner) does, on
// 1,010 keys and several partition counts; "murmur2", the default, does
// not agree with either on all of them.
func TestInteropPartitionerHashes(t *testing.T) {
	const keys = 1010
	for _, c := range []struct {
		name string
		ref  sarama.Partitioner
	}{
		{PartitionerSarama, sarama.NewHashPartitioner("t")},
		{PartitionerCRC32, sarama.NewConsistentCRCHashPartitioner("t")},
	} {
		for _, n := range []int{3, 4, 7, 12, 64} {
			ours := Config{Partitioner: c.name}.partitioner().ForTopic("t")
			murmur := Config{}.partitioner().ForTopic("t")
			differ := 0
			for i := range keys {
				key := "key-" + strconv.Itoa(i)
				r := &kgo.Record{Key: []byte(key)}
				want := saramaPartition(t, c.ref, key, n)
				if got := ours.Partition(r, n); got != want {
					t.Fatalf("%s, %d partitions: key %q to %d, Sarama's reference to %d", c.name, n, key, got, want)
				}
				if murmur.Partition(r, n) != want {
					differ++
				}
			}
			if differ == 0 {
				t.Errorf("murmur2 agrees with %s on all %d keys (%d partitions): the test proves nothing", c.name, keys, n)
			}
			if n == 4 {
				t.Logf("%d partitions: murmur2 puts %d of %d keys elsewhere than %s", n, differ, keys, c.name)
			}
		}
	}
	if err := (Config{Brokers: []string{"a:1"}, Partitioner: "fnv"}).Validate(); err == nil {
		t.Error("unknown partitioner accepted")
	}
}

// Through the broker's publisher, on a real (kfake) topic of 4 partitions, the
// "sarama" partitioner puts each keyed message on Sarama's partition.
func TestInteropSaramaPartitionerPublish(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(4))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cfg := Config{Brokers: c.ListenAddrs(), Partitioner: PartitionerSarama}
	b, err := New(cfg, nil) // through the broker, as the bus builds it
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	p := b.Publisher()
	const n = 200
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage("m"+strconv.Itoa(i), nil)
		msgs[i].Metadata.Set(schema.KeyPartitionKey, "order-"+strconv.Itoa(i))
	}
	if err := p.Publish("orders", msgs...); err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics("orders"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ref := sarama.NewHashPartitioner("orders")
	for seen := 0; seen < n; {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("%d of %d records read: %v", seen, n, err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			seen++
			if want := saramaPartition(t, ref, string(r.Key), 4); int(r.Partition) != want {
				t.Errorf("key %s on partition %d, Sarama puts it on %d", r.Key, r.Partition, want)
			}
		})
	}
}
