package kafka

import (
	"hash/crc32"
	"hash/fnv"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Partitioner names for [Config].Partitioner: how the publisher maps a
// record key (ce_partitionkey) to a partition. Producers that share a
// topic must use the same mapping, or one key lands on two partitions and
// loses its order.
const (
	// PartitionerMurmur2 is Kafka's own: murmur2 of the key, the sign bit
	// cleared, modulo the partition count. The Java client's default (and
	// so Kafka Streams', Connect's and the console producer's), franz-go's
	// default, and librdkafka's (and so confluent-kafka-go's, -python's
	// and -dotnet's) "murmur2" and "murmur2_random" partitioners agree
	// with it. Not Sarama's default, nor librdkafka's default.
	PartitionerMurmur2 = "murmur2"
	// PartitionerSarama is Sarama's default (sarama.NewHashPartitioner,
	// which watermill-kafka's publisher uses too): 32-bit FNV-1a of the
	// key, taken as a signed int32, modulo the partition count, negated
	// when negative. Use it on topics shared with Sarama producers.
	PartitionerSarama = "sarama"
	// PartitionerCRC32 is librdkafka's default, "consistent_random": CRC32
	// (IEEE) of the key, unsigned, modulo the partition count (also
	// Sarama's NewConsistentCRCHashPartitioner). Use it on topics shared
	// with producers on librdkafka left at its default.
	PartitionerCRC32 = "crc32"
)

// partitioner returns the franz-go partitioner for c.Partitioner: keyed
// records are hashed as the name says; records without a key stick to a
// partition until its batch rolls over, whatever the name (so none of the
// names reproduces another client's placement of keyless records, which
// is random or sticky by design anyway). It panics on an unknown name,
// which Validate reports.
func (c Config) partitioner() kgo.Partitioner {
	switch strings.ToLower(c.Partitioner) {
	case "", PartitionerMurmur2:
		return kgo.StickyKeyPartitioner(nil)
	case PartitionerSarama:
		return kgo.StickyKeyPartitioner(kgo.SaramaCompatHasher(fnv32a))
	case PartitionerCRC32:
		return kgo.StickyKeyPartitioner(kgo.SaramaHasher(crc32.ChecksumIEEE))
	}
	panic("kafka: unknown partitioner " + c.Partitioner)
}

// PartitionerOptions returns the franz-go options of the partitioner
// c.Partitioner names, for a franz-go producer of your own that must put
// keys where the bus's publisher puts them (with [Config.ClientOptions]).
func (c Config) PartitionerOptions() []kgo.Opt {
	return []kgo.Opt{kgo.RecordPartitioner(c.partitioner())}
}

func validPartitioner(name string) bool {
	switch strings.ToLower(name) {
	case "", PartitionerMurmur2, PartitionerSarama, PartitionerCRC32:
		return true
	}
	return false
}

func fnv32a(b []byte) uint32 {
	h := fnv.New32a()
	h.Write(b)
	return h.Sum32()
}
