// Package amqp is the RabbitMQ broker of the bus (BUSLINE_BROKER=amqp),
// built on watermill-amqp v2 and amqp091-go, with safe defaults where
// watermill-amqp has unsafe ones.
//
// # Topology
//
// Each topic is a durable fanout exchange named after the topic
// ([ExchangeName]). Each consumer group has one durable queue per topic,
// named "<topic>.<group>" ([QueueName]) and bound to the topic's exchange.
// Subscriptions of one group compete on that queue (each message reaches
// one of them); every group gets every message. A fanout exchange rather
// than a topic exchange: the bus routes by topic name alone, so routing
// keys would add nothing but a way to get them wrong.
//
// A fanout exchange drops a message no queue is bound to, and RabbitMQ
// still confirms it. [Broker.Prepare] therefore declares the exchange, the
// group's queue and the binding ahead of time; call it for every (topic,
// group) before publishing, and messages published before the group
// subscribes wait in its queue.
//
// One AMQP connection (client name "busline") is shared by the publisher
// and every subscriber; watermill-amqp reconnects it with backoff when it
// drops, and subscribers declare their topology again.
//
// # Defaults
//
//   - Durable: exchanges and queues are durable, messages are published
//     persistent (delivery mode 2), so they survive a broker restart.
//   - Publisher confirms: Publish returns only after RabbitMQ confirmed each
//     message (for a persistent message on a durable queue: after it was
//     written). Publishing uses a pool of ChannelPoolSize channels (default
//     [DefaultChannelPoolSize]) in confirm mode, instead of watermill-amqp's
//     channel per Publish.
//   - Manual acks: a delivery is acked only when the handler acks the
//     message.
//   - Bounded prefetch: each subscription's channel holds at most Prefetch
//     (default [DefaultPrefetch]) unacknowledged deliveries. watermill-amqp
//     hands them to the reader one at a time, so prefetch buffers but does
//     not add parallelism; run several subscriptions for that.
//   - Nack delay: RabbitMQ requeues a nacked delivery at once, which makes a
//     failing message a hot loop. Here a Nack waits NackDelay (default
//     [DefaultNackDelay]) before the delivery is returned to the queue. The
//     subscription holds the delivery meanwhile and hands out nothing else,
//     so order within the subscription is kept and a failing message slows
//     only its own subscription (and the deliveries it has prefetched).
//     It is a floor that holds for every nack, also those the router makes
//     outside the middleware stack; a backoff in the handler's middleware
//     (middleware.NackDelay) adds to it.
//   - Tolerant marshaler: unmarshalling never fails. Headers of any AMQP
//     type (RabbitMQ's x-death table on dead-lettered messages, integers,
//     booleans and timestamps from other producers) become string metadata,
//     where watermill-amqp's marshaler would fail and requeue the message
//     forever (watermill-amqp #65).
//
// # Wire format
//
// Messages follow the CloudEvents AMQP binding as RabbitMQ carries it (see
// schema.ToAMQPHeaders): metadata ce_x travel as headers cloudEvents_x
// (cloudEvents:x is accepted on input), content-type as the content_type
// property, other metadata (traceparent, busline_ keys) as headers of the
// same name, all strings. The event id is mirrored to the message_id
// property, ce_correlationid to correlation_id and ce_time to timestamp.
// The message UUID travels in the _watermill_message_uuid header, as with
// plain watermill-amqp; a message from another producer gets the
// cloudEvents_id header, else the message_id property, else a new UUID.
// Every delivered message carries [KeyExchange], [KeyRoutingKey] and
// [KeyRedelivered]; they are dropped when the message is published again.
//
// # Delivery semantics
//
// At least once. A message leaves its queue only when the reader acks it.
// A nacked message, one in flight when its subscriber closes, and one held
// by a consumer whose connection dies return to the queue and are
// delivered again, possibly to another subscription of the group, with
// [KeyRedelivered] "true". Within one subscription messages arrive in
// queue order and the next is handed out only after the previous one was
// acked or nacked; across the competing subscriptions of a group there is
// no order.
//
// # Shutdown
//
// Cancelling the context given to Subscribe stops fetching: no further
// message is handed out, the message being processed may still be acked
// (a nack returns it at once, without the delay), then the channel is
// closed. Closing a subscriber returns its in-flight deliveries to the
// queue at once, also one waiting out a nack delay, and closes its
// channels; Close never waits for a nack delay or for a reader. The bus
// closes subscribers and the publisher before [Broker.Close], which closes
// whatever is left and then the connection.
package amqp
