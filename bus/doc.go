// Package bus is Busline's event bus: build one from a [Config] with [New],
// register handlers with [Bus.Handle], publish with [Bus.Publish], and run
// it with [Bus.Run] until its context ends or [Bus.Close] is called.
//
// # Brokers
//
// The broker is chosen by configuration alone ([Config].Broker, or
// BUSLINE_BROKER through [ConfigFromEnv]): "memory", the default, an
// in-process broker (package bus/memory); "kafka" (package bus/kafka, on
// franz-go); "amqp", RabbitMQ (package bus/amqp, on amqp091-go). The same
// service code runs on each, behind the boundary of package bus/broker.
//
// Each handler named h consumes its topic as the consumer group
// "<Config.Group>.<h>": every handler gets every message of its topic, and
// instances of one service share the work. Handle prepares the topic for the
// group at once (Kafka: topic created; RabbitMQ: durable queue bound), so
// messages published before Run wait for the handler.
//
// # Middleware
//
// Every handler runs inside the default stack of package middleware
// (correlation, nack delay, dead letter, dedup, circuit breaker, retry,
// throttle, timeout, panic recovery; see that package for the order and
// why), preceded by the bus's tracing and metrics (package bus/telemetry,
// which names the spans, metrics and attributes). [WithStack] changes it for
// every handler, [HandlerStack] for one.
//
// # Errors
//
// A handler returning nil acks its message. An error is retried in process with
// exponential backoff and jitter; when those retries are exhausted, the message
// goes back to the broker's delayed tier and comes back to the same handler
// after each of [Config].RedeliveryDelays in turn (the consumer moves on
// meanwhile; the budget travels in the message's busline_retry_* metadata).
// When the budget is spent, or at once for a [Permanent] error (and schema
// errors), the message goes to the dead-letter topic ([Config].DeadLetterTopic)
// with the reason and the totals of every round in its busline_dlq_* metadata,
// and is acked only once that publish succeeded. [Bus.DeadLetters] reads the
// dead-letter topic, [Bus.Replay] sends a dead letter back to its topic. A bad
// configuration fails [New] with every problem listed.
//
// # Delivery semantics
//
// At least once, with idempotent handling: a message is acked only after its
// handler succeeded or after it was safely dead-lettered, and the dedup step
// skips a message whose id was already processed successfully. Order: per
// partition (and so per key, ce_partitionkey) on Kafka; per queue on
// RabbitMQ and on the in-process broker with one handler instance. A nacked
// message comes back after a delay, never in a hot loop.
//
// Exactly once, for a Kafka handler that only publishes to Kafka, with
// [WithKafkaTransactions]. The in-process broker is bounded (package
// bus/memory): Publish waits while a queue is full.
//
// # Workers
//
// [Bus.AddWorker] registers a long-running task, such as the outbox relay
// of package bus/outbox, that Run starts and Close stops: Close cancels its
// context first and waits for it before the publisher closes, so it may
// publish through the bus until then. A worker that fails shuts the bus
// down. [Bus.Stamp] gives messages stored for later publishing the
// envelope Publish would give them now.
//
// # Shutdown
//
// [Bus.Close] (and Run when its context ends) stops fetching messages, lets
// the handlers in flight finish with a live context until Close's context is
// done, acks what finished, then cancels what is still running (those
// messages are nacked and delivered again later), and closes the router,
// publisher and broker connections.
//
// # Concurrency
//
// A Bus is safe for concurrent use. Handlers must be registered before Run.
package bus
