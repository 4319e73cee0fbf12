// Package kafka is the Kafka broker of a bus (BUSLINE_BROKER=kafka): a
// franz-go producer and watermill-kafka v3's consumer (Sarama), with the
// safe defaults that Watermill and Sarama leave off.
//
// # Overview
//
// [New] builds a [Broker] from a [Config]. [Broker.Publisher] is one shared
// publisher; [Broker.Subscriber] makes a subscriber in a consumer group;
// [Broker.Prepare] creates a topic; [Broker.Ping] checks the connection;
// [Broker.Lag] reports a group's consumer lag per partition. Publishing
// goes through Busline's own small publisher on a franz-go producer,
// consuming through watermill-kafka's subscriber (Sarama); topic creation,
// ping and lag go through a franz-go admin client, which honours contexts.
//
// # Publishing
//
// A Publish call hands all its messages to the producer at once
// (watermill-kafka's publisher sends one message per round trip) and
// returns when every message is acknowledged by all in-sync replicas or has
// failed. The producer packs the records of a partition into as few
// produce requests as it can, in the order of the call. A failure does not
// stop the others: the messages not listed in the returned *[PublishError]
// were all written, so a caller can publish again exactly the failed ones
// (their UUIDs, positions and errors; errors.Is sees each error, for
// example kerr.MessageTooLarge). A record is retried for about 30 seconds
// (a broker down, a leader election); then it, and every record behind it
// on its partition, is reported failed, even when its request was written
// and never answered. Such a record may have been written all the same, so
// publishing it again may duplicate it: delivery is at least once, and the
// consumers' dedup absorbs duplicates. Publish does not watch the messages'
// contexts: the producer is shared, and one caller's cancelled context
// would fail other callers' records. The publisher's Close waits for the
// Publish calls in flight, so at most about as long; Publish after Close
// returns [ErrClosed]. Messages must not change until Publish returns:
// payloads are not copied.
//
// Why not Sarama, as watermill-kafka: against kfake, in batches of 100
// small records with the ce_id header, Sarama's idempotent producer did
// about 150k msgs/s, franz-go's 390-420k with the same guarantees
// (docs/benchmarks.md). The records are
// the same either way; franz-go compresses record batches with snappy where
// the brokers support it, which every Kafka client reads.
//
// # Defaults
//
//   - Producer: acks=all and idempotent (franz-go's defaults), no linger,
//     snappy compression where the brokers support it (franz-go's default),
//     at most 1 MB per record batch. A Publish returns once all in-sync
//     replicas have every message; the producer's retries neither duplicate
//     nor reorder records. New fails when no broker answers within 15
//     seconds or the brokers refuse the credentials. watermill-kafka's
//     OpenTelemetry tracer stays off: it would rewrite traceparent, which
//     Busline propagates itself.
//   - Consumer: a consumer group per [Broker.Subscriber]. A group with no
//     committed offset starts at the oldest record (Config.InitialOffset).
//     Sarama's and Watermill's default, the newest, silently skips every
//     message published before the group first joined.
//   - Nack: a nacked message is delivered again after Config.NackDelay (1s),
//     never in a hot loop.
//   - Security: TLS and SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) from
//     Config. SCRAM uses franz-go's implementation, also for the Sarama
//     consumer; user names and passwords are sent as given (no SASLprep).
//
// # Partitioning and order
//
// The metadata value schema.KeyPartitionKey (ce_partitionkey) is the
// record key. By default a key maps to a partition as in Kafka's Java
// client, franz-go and librdkafka's "murmur2" partitioners (murmur2):
// producers using those put the same key on the same partition. Sarama's
// default partitioner (FNV-1a) and librdkafka's default
// ("consistent_random", CRC32) do not: on a topic shared with such
// producers set Config.Partitioner to [PartitionerSarama] or
// [PartitionerCRC32]. A message without that key has no record key; such
// records stick to one partition for a while and then move on (the
// "sticky" partitioning of Kafka's Java client 2.4 to 3.2), whatever the
// partitioner. Order is kept per partition, and so per key: never
// across partitions, and not for messages without a key on a topic with more
// than one partition.
//
// Publishing keeps it: the records of one Publish call reach each
// partition in the order of the call, and the idempotent producer's retries
// neither reorder nor duplicate them (concurrent Publish calls interleave).
// Consuming keeps it: a subscriber hands out the next message of a
// partition only after the previous one was acked, and hands out messages
// of different partitions at the same time, so on a bus (whose router runs
// each message it receives in a goroutine of its own) a handler processes
// one message per partition at a time, the partitions in parallel. The
// parallelism is the number of partitions the member is assigned;
// TestConsumeOrderedPerPartitionParallelAcross pins both properties.
//
// # Record format
//
// The message UUID travels once: in the ce_id header when it equals the
// UUID (every message the bus publishes), else in Watermill's
// _watermill_message_uuid header. Consumers using watermill-kafka's own
// unmarshaler see an empty UUID on the former (and ce_id in the metadata).
// A ce_correlationid equal to ce_id is not sent either; the unmarshaler
// restores it (schema.RestoreCorrelation).
//
// The unmarshaler never fails (in watermill-kafka an unmarshal error makes
// the group rejoin forever and blocks the partition). Headers become
// metadata with their bytes as they are. A record without Watermill's
// _watermill_message_uuid header takes its ce_id header as UUID, or else the
// stable id "kafka:<topic>/<partition>/<offset>". A record key becomes
// ce_partitionkey when that header is missing.
//
// # Delivery semantics
//
// At least once. Within a partition a subscriber delivers the next message
// only after the current one is acked; partitions are consumed in parallel.
// An ack marks the offset, and offsets are committed every second, so a
// crash redelivers up to a second of acked messages; an ack that races with
// Close or with a rebalance is dropped, and the message is delivered again.
// A nacked message blocks its partition until it is acked: the bus's retry
// and dead-letter middleware must end that. A rebalance waits for every
// member's in-flight message, up to Config.RebalanceTimeout (60s); a member
// still busy then is evicted and its message is delivered again elsewhere.
// Each Subscribe call is its own group member; a message reaches one member
// of each group.
//
// # Shutdown
//
// [Broker.Close] closes the subscribers it made (in-flight, unacked
// messages are redelivered later), then the publisher, waiting for Publish
// calls in flight, then the admin client.
package kafka
