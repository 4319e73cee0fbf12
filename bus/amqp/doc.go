// Package amqp is the RabbitMQ broker of the bus (BUSLINE_BROKER=amqp):
// a Watermill publisher and subscriber written on amqp091-go (it replaced
// watermill-amqp v2, whose publisher waits for each confirm and whose
// subscriber hands out one message at a time), wire-compatible with
// watermill-amqp's durable pub/sub and with safe defaults.
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
// Queues are classic unless Config.QueueType is "quorum", and unbounded
// unless Config.MaxQueueLength bounds them (x-max-length with x-overflow
// reject-publish: a full queue makes Publish fail with [ErrNacked], counted
// by [Broker.RejectedPublishes]). RabbitMQ cannot change either on an
// existing queue: declaring it with other arguments fails with
// [ErrQueueMismatch].
//
// # Delayed redelivery
//
// [Broker.Redeliverer] gives a group's queue one durable wait queue per
// delay ([WaitQueueName]), bound to no exchange, with x-message-ttl the
// delay and x-dead-letter-exchange "" plus x-dead-letter-routing-key the
// group's queue: a message redelivered there waits without holding a
// consumer, then returns to that group's queue alone. This needs no
// plugin (RabbitMQ 3.10 or later); the delayed-message-exchange plugin is
// unmaintained, keeps delayed messages on one node and is gone in 4.3.
// One queue per delay, because RabbitMQ expires messages only at a
// queue's head. Quorum wait queues dead-letter at least once
// (x-dead-letter-strategy at-least-once, which needs x-overflow
// reject-publish); classic ones at most once, which RabbitMQ 3.10.8
// refuses to change (x-dead-letter-strategy on a classic queue is
// PRECONDITION_FAILED).
//
// The broker holds two AMQP connections: "busline-publish" for its
// publisher and "busline-consume" for every subscriber and for Prepare,
// Ping and QueueDepth (RabbitMQ blocks a publishing connection under flow
// control; acks on it would stall too). When one drops, the broker
// redials it in the background with backoff (250ms doubling to 30s, with
// jitter). Meanwhile Publish fails at once with [ErrNotConnected] (or
// [ErrChannelClosed] for messages in flight), and the next Publish after
// the reconnect goes through; subscriptions wait for the connection,
// declare their topology again and resume.
//
// # Defaults
//
//   - Durable: exchanges and queues are durable, messages are published
//     persistent (delivery mode 2), so they survive a broker restart.
//   - Pipelined publisher confirms: Publish returns only after RabbitMQ
//     confirmed each message (for a persistent message on a durable queue:
//     after it was written), but does not wait for one confirm before it
//     sends the next: up to PublishWindow (default [DefaultPublishWindow])
//     messages per channel are unconfirmed at once. Publishing uses a pool
//     of ChannelPoolSize channels (default [DefaultChannelPoolSize]) in
//     confirm mode; one Publish call sends its batch on one channel, in
//     order. Publish a batch in one call: its cost is about one round trip
//     and one disk sync, not one per message.
//   - Per-message outcome: when some messages of a call fail, Publish
//     returns a *[broker.PublishError] that lists each failed message with
//     its cause: [ErrNacked] (RabbitMQ refused it, e.g. a full queue with
//     x-overflow reject-publish), [ErrUnroutable], [ErrChannelClosed] or
//     [ErrNotConnected]. Messages not listed were confirmed.
//   - Mandatory: messages are published mandatory, and one no queue is
//     bound to comes back as [ErrUnroutable] instead of being confirmed
//     and dropped. Config.AllowUnroutable turns this off.
//   - Manual acks: a delivery is acked only when the handler acks the
//     message. Acks wait until a quarter of the prefetch is settled or
//     2ms have passed, and a run of consecutive deliveries goes out as one
//     multiple ack; nacks go out at once. A consumer that dies loses up
//     to 2ms of acks, and those messages are delivered again.
//   - Bounded parallelism: a subscription hands out up to Concurrency
//     (default [DefaultConcurrency], 1) messages before one of them is
//     settled; the router runs a handler per message, so at most
//     Concurrency handlers of a subscription run at once. Its channel
//     holds at most Prefetch (default: the larger of [DefaultPrefetch] and
//     Concurrency) unacknowledged deliveries, those in the handlers
//     included; Prefetch below Concurrency is a configuration error.
//   - Nack: RabbitMQ requeues a nacked delivery at once. The bus's
//     middleware stack waits before it nacks (middleware.NackDelay, the one
//     nack delay), holding the delivery, so a failing message is no hot
//     loop and slows only its own subscription.
//   - Tolerant marshaler: unmarshalling never fails. Headers of any AMQP
//     type (RabbitMQ's x-death table on dead-lettered messages, integers,
//     booleans and timestamps from other producers) become string metadata,
//     where watermill-amqp's marshaler would fail and requeue the message
//     forever (watermill-amqp #65).
//
// # Wire format
//
// Messages follow the CloudEvents AMQP binding as RabbitMQ carries it (see
// ToHeaders): metadata ce_x travel as headers cloudEvents_x
// (cloudEvents:x is accepted on input), content-type as the content_type
// property, other metadata (traceparent, busline_ keys) as headers of the
// same name, all strings. The event id is mirrored to the message_id
// property and ce_time to timestamp. What the receiver can tell from the
// rest is not sent, since RabbitMQ pays for every header of every message:
// the message UUID travels in the _watermill_message_uuid header (as with
// plain watermill-amqp) only when it differs from the event id, and the
// correlation id only when it differs from the event id. The unmarshaler
// takes as UUID the _watermill_message_uuid header, else the
// cloudEvents_id header, else the message_id property, else a new UUID; as
// correlation id the cloudEvents_correlationid header, else the
// correlation_id property, else the event id. A consumer using
// watermill-amqp's own marshaler sees an empty UUID on Busline's messages.
// Every delivered message carries [KeyExchange], [KeyRoutingKey] and
// [KeyRedelivered]; they are dropped when the message is published again.
//
// # Delivery semantics
//
// At least once. A message leaves its queue only when the reader acks it.
// A nacked message, one in flight when its subscriber closes, and one held
// by a consumer whose connection dies return to the queue and are
// delivered again, possibly to another subscription of the group, with
// [KeyRedelivered] "true". With Concurrency 1, within one subscription
// messages arrive in queue order and the next is handed out only after
// the previous one was acked or nacked; with Concurrency above 1 they are
// handed out in queue order but handled in parallel, so they finish (and
// a nacked one comes back) out of order. Across the competing
// subscriptions of a group there is no order. Watermill's conformance
// suite runs with the default Concurrency, ordered features on.
//
// # Shutdown
//
// Cancelling the context given to Subscribe stops fetching: no further
// message is handed out and the messages channel is closed; the messages
// being processed may still be acked (a nack returns them at once), then
// the AMQP channel is closed, which returns what it prefetched. Closing a
// subscriber returns its in-flight deliveries to the queue at once and
// closes its channels; Close never waits for a reader. The bus
// closes subscribers and the publisher before [Broker.Close], which closes
// whatever is left and then the connection.
package amqp
