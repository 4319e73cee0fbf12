// Package kafka is the Kafka broker of a bus (BUSLINE_BROKER=kafka): a
// franz-go producer and a franz-go group consumer of Busline's own under
// Watermill's router, with the safe defaults that Watermill and Sarama
// leave off. It is the module's one Kafka client.
//
// # Overview
//
// [New] builds a [Broker] from a [Config]. [Broker.Publisher] is one shared
// publisher; [Broker.Subscriber] makes a subscriber in a consumer group;
// [Broker.Prepare] creates a topic; [Broker.Ping] checks the connection;
// [Broker.Lag] reports a group's consumer lag per partition;
// [Broker.StopFetching] and [Broker.Drain] are the bus's graceful shutdown;
// [Broker.ConsumerStats] reports what the subscriptions hold;
// [Broker.Redeliverer] moves a handler's message to one of its retry
// topics, which its subscriber consumes too ([broker.SubscriberOptions].RetryDelays). Publishing
// goes through Busline's own small publisher on a franz-go producer,
// consuming through Busline's own subscriber on a franz-go group consumer
// (watermill-kafka's Sarama subscriber hands out one message per partition
// at a time, lets a rebalance deliver duplicates during a slow handler, and
// blocks a partition for every nack); topic creation, ping and lag go
// through a franz-go admin client, which honours contexts.
//
// # Publishing
//
// A Publish call hands all its messages to the producer at once
// (watermill-kafka's publisher sends one message per round trip) and
// returns when every message is acknowledged by all in-sync replicas or has
// failed. The producer packs the records of a partition into as few
// produce requests as it can, in the order of the call. A failure does not
// stop the others: the messages not listed in the returned *[broker.PublishError]
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
// returns [broker.ErrClosed]. Messages must not change until Publish returns:
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
//   - Consumer: a consumer group per [Broker.Subscriber], cooperative-sticky
//     assignment, a 10s session timeout (a crashed member's partitions
//     wait that long). A group with no committed offset starts at the
//     oldest record (Config.InitialOffset). Sarama's and Watermill's
//     default, the newest, silently skips every message published before
//     the group first joined. At most 1024 records in flight per
//     subscription (Config.MaxInFlight), offsets committed every second.
//   - Nack: a nacked message is delivered again at once; the bus's
//     middleware stack waits before it nacks (middleware.NackDelay), so it
//     is never a hot loop, and only its lane waits.
//   - Security: TLS and SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) from
//     Config, for producer and consumer alike; user names and passwords are
//     sent as given (no SASLprep).
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
// Consuming keeps what the handler's ordering asks for (Config.Ordering,
// or per handler bus.WithOrdering). Records wait in lanes, and a lane
// hands out its next record only after the previous one was acked:
//
//   - "partition" (the default): one lane per partition. A handler
//     processes one record of a partition at a time, in offset order, the
//     partitions in parallel; the parallelism is the number of partitions
//     the member is assigned. TestConsumeOrderedPerPartitionParallelAcross
//     pins both properties.
//   - "key": one lane per partition and key; records without a key share
//     one lane per partition. Records of one key run one at a time in
//     offset order; different keys of a partition run concurrently, up to
//     the in-flight bound. Across keys there is no order.
//   - "unordered": every record runs as soon as it is fetched, up to the
//     in-flight bound.
//
// With batch delivery ([broker.SubscriberOptions].BatchSize, bus.WithBatchDelivery)
// a partition's lane hands out up to BatchSize of its queued records (one
// poll's, or more when polls queued up) as one carrier message, in order,
// and the next batch when the carrier was acked by a batch handler that
// took it; otherwise the records go one by one.
//
// # Delayed redelivery (retry topics)
//
// [Broker.Redeliverer] gives a handler (a group on a topic) one retry topic
// per delay tier, [RetryTopic]: "<topic>.<group>.retry.<delay>", with as
// many partitions as the topic, created idempotently. Per group, so that a
// redelivery reaches only the handler that failed, not the other groups of
// the topic. Redeliver writes the message there, as the publisher writes
// it (UUID, metadata, payload, and so its record key), with the header
// busline_retry_due (unix milliseconds, the redelivering process's clock
// plus the delay, rounded up), acks=all; the caller then acks the original,
// which frees its lane and lets its offset be committed.
//
// A subscriber consumes the retry topics of its group on the topic in the
// same member (one client, one group) and hands their records to the same
// channel, so the router runs them through the same handler;
// [RecordFromContext] names the retry topic. Besides the tiers of
// [broker.SubscriberOptions].RetryDelays, Subscribe finds by name every
// tier of the group on the topic that exists then (a tier of a delay no
// longer configured, or of a handler that has none any more): records
// waiting there when the delays changed come back when due. With
// InitialOffset "newest" the group's offset on such a tier is set to its
// start where it has none (a group with members running refuses that; the
// bus's Redeliverer set it when it created the tier). No old tier is taken
// when a topic exists that could own its name too (topic "a" with group
// "b.c" and topic "a.b" with group "c" name their tiers alike); a
// subscription without RetryDelays that cannot list the topics logs it and
// reads none. Old tiers are not deleted (a member of an older version may
// still write to them): delete one when [Broker.Lag] shows the group at 0
// on it, and restart the members that read it. Transactional subscriptions
// read no tier. A retry
// partition hands out no record before its due time: it holds its records
// from the first one not yet due on and is paused (PauseFetchPartitions)
// until a timer of the subscription finds them due, then it puts them on
// their lanes (the handler's ordering, per retry partition) and resumes.
// Every record of one retry topic has the same delay, so a partition's
// records are due in offset order and waiting at its head is waiting for
// the earliest. A due time later than the record's timestamp plus the
// tier's delay (a broken header, a clock far ahead) counts as that, so no
// record holds its partition longer than its delay. Precision: a record is
// never handed out before its due time (as the redelivering process's
// clock tells it: clocks of different hosts must agree); it may come later by the fetch latency (about 100ms
// after a resume), by what its lane is still busy with, and when records
// of one tier were redelivered by hosts whose clocks disagree.
// TestDelayedRetryTiming logs how late (a few ms on kfake).
//
// A wait holds nothing else up: held records are tracked (the committed
// offset of the retry partition stays at the first one) but are neither in
// flight (Config.MaxInFlight; [ConsumerStats].Held counts them) nor
// "stuck" for the slow-partition pause, and the timer, not a lane, waits.
// A held partition holds at most what one or two polls returned for it. A
// revoke or a close does not wait for a due time: the held records are
// dropped, neither handed out nor committed, and the partition's next owner
// reads them again and waits for the rest of their delay. A revoked
// partition is resumed in the client at once, so that it fetches when it
// is assigned back (spring-kafka #2525, where it stayed paused for good).
// Lost partitions and shutdown drop held records the same way.
// [Broker.Lag] counts the records waiting in the group's retry topics as
// lag (they are not committed before they were handled).
//
// Order: a record moved to a retry topic leaves its key's order, in every
// ordering mode. The records after it on its topic do not wait for it
// ("partition": its partition goes on with the next record; "key": its key
// goes on with the next record of the key; "unordered": there was no order)
// and may be handled before it, or at the same time when it comes back.
// Within one retry topic, the records of a key keep their order relative to
// each other (one partition, offset order) in "partition" and "key"
// ordering; across tiers, and between a tier and the topic, there is no
// order. Nothing parks a key behind its retried record. Retry topics do not
// go with Transactions.
//
// # Record format
//
// The message UUID travels in Watermill's _watermill_message_uuid header,
// so that consumers using watermill-kafka's own unmarshaler see it as
// msg.UUID; the CloudEvents id travels in ce_id. A ce_correlationid equal
// to ce_id is not sent; the unmarshaler restores it
// (schema.RestoreCorrelation). Records a stock watermill-kafka publisher
// wrote are read with their UUID and metadata
// (TestKafkaConsumerWireCompat, in package bus, pins both directions).
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
// At least once. An offset is committed only when its record and every
// earlier record of its partition were acked (handled, or safely
// dead-lettered): records finish out of order in "key" and "unordered"
// ordering, and the committed offset is that of the oldest record not yet
// finished. Commits go every Config.CommitInterval (1s), on revoke and on
// close, never one round trip per record. A crash (SIGKILL) redelivers the
// records in flight and those finished within about one commit interval
// (TestKafkaConsumerCrash counts them).
//
// A nacked record is handed out again at once, after the stack's nack
// delay; meanwhile only its lane waits (its partition, or its key), and the
// committed offset stays at it, so a crash loses nothing. Records queued behind a waiting
// lane count against the in-flight bound.
//
// Rebalances (cooperative-sticky) block while a poll's records are being
// dispatched (franz-go's BlockRebalanceOnPoll). When partitions are
// revoked, each finishes the records up to the highest one it handed out,
// hands out no later one, commits what finished, and only then lets the
// rebalance go on, within three quarters of Config.RebalanceTimeout (60s):
// the next owner handles none of the finished records again, in every
// ordering (TestKafkaConsumerRebalance: 0 lost, 0 twice). A handler still
// running after that is not waited for; its record is delivered again to
// the next owner. Lost partitions (the member's session expired) commit
// nothing; their in-flight results are dropped, with a log line and
// busline.kafka.lost_partitions. While a revoke waits, franz-go's
// rebalance lock also holds back polls, so the member's other partitions
// get no new records until it is done. After a loss, or a revoke that ran
// out of time, a handler may still be running when the partition comes
// back to the same member: then, for once, two records of one partition
// can run at the same time even in "partition" ordering.
//
// Backpressure: a subscription fetches no more once it holds
// Config.MaxInFlight records; a slow partition is paused (see
// Config.MaxInFlightPerPartition). Nothing is buffered without bound.
//
// Each Subscribe call is its own group member; a message reaches one member
// of each group.
//
// Every subscription fetches with read_committed: records of a Kafka
// transaction are handed out once it committed, those of an aborted one
// never. Without transactional producers on a topic this changes nothing
// (its last stable offset is its end).
//
// # Transactions (exactly-once consume-transform-produce)
//
// A subscription with [broker.SubscriberOptions].Transactions (bus.WithKafkaTransactions)
// is a franz-go GroupTransactSession: a group consumer and a transactional
// producer on one client, transactional id
// "busline/<group>/<topic>/<Config.InstanceID>/<n>". It handles each poll
// (up to Config.MaxInFlight records) in one transaction, in "partition"
// ordering. What a handler publishes with its message's context goes
// through the broker's publisher as usual, which finds the transaction in
// the context: it only marshals the records and holds them per message; a
// failed attempt's are dropped ([Broker.DiscardOutputs], which
// broker.DiscardFailedOutputs calls around the handler), and an ack hands
// the message's records, dead letters included, to the transaction's
// producer. When every record of the poll
// was acked, the consumed offsets and every output commit atomically
// (TxnOffsetCommit, EndTxn); a nack, a failed produce, a revoked or lost
// partition or a close aborts the transaction, drops its outputs, rewinds
// to the committed offsets and polls the same records again (the stack
// waited its nack delay before the nack). A crash leaves the transaction
// open until the restarted member (same InstanceID) fences it, or the brokers' transaction timeout
// (40s) aborts it. So, for read_committed readers, each input's outputs
// appear exactly once (TestKafkaTransactionCrash: 20 SIGKILLs over 10,000
// records; TestKafkaTransactionRebalance). Effects outside Kafka still run
// at least once, as often as the poll is redone.
//
// Costs: a transaction per poll (AddOffsetsToTxn, TxnOffsetCommit, a
// heartbeat and EndTxn: about 170-190us per transaction on kfake, more on a
// real cluster, so a trickle of one record per poll does about 5.5k
// records/s); outputs become visible
// only when their poll commits; a nack or a rebalance redoes the whole
// poll, every partition of it; and a publish with the handler's context
// returns before its records are written (a write failure aborts the
// transaction instead of failing the Publish). Throughput is higher than
// the normal path's when polls are full, since outputs are produced
// asynchronously in batches (docs/benchmarks.md, BenchmarkKafkaTransaction).
//
// # Shutdown
//
// The bus calls [Broker.StopFetching], then [Broker.Drain]: each
// partition finishes the records up to the highest one it handed out (as on
// a revoke), so that what finished is one contiguous prefix and the next
// consumer of the group handles none of it again. A record nacked meanwhile
// is given back instead of handed out again (the stack skips its nack delay
// at shutdown), with the records behind it on its lane (its partition, or
// its key): the drain does not wait for them, the commit stops before the
// first of them, and the next consumer gets them in order, together with
// what other lanes finished after them (delivered again: the dedup step
// acks those as duplicates with a shared store). [Broker.Close] then
// closes the subscribers it made (each commits what finished and leaves the
// group; what was in flight and not acked is delivered again later), then
// the publisher, waiting for Publish calls in flight, then the admin
// client. A transactional subscription stops polling, hands out no more
// records of the poll in flight, waits for the handlers running and aborts
// that poll's transaction: its records are handled again by the group's next
// consumer (the bus refuses publishes once Close began, so finishing the
// poll would dead-letter what its handlers publish).
package kafka
