// Package memory is Busline's in-process broker, the bus's default: a
// bounded, ordered Watermill Publisher and Subscriber with consumer groups,
// passing Watermill's universal Pub/Sub suite.
//
// # Why not GoChannel
//
// Watermill's GoChannel starts a goroutine per message and subscriber: it
// never pushes back on publishers, so memory grows when handlers fall behind,
// and it gives no order. Its blocking mode orders but blocks the publisher
// until the handler acks, which deadlocks handlers that publish in a cycle.
//
// # Queues and backpressure
//
// Each topic has one queue per consumer group, of Config.Buffer messages.
// Publish copies each message into every group's queue and waits while one is
// full, up to Config.PublishTimeout (then ErrQueueFull) or the message
// context's end. Messages published to a topic no group has subscribed to yet
// wait in a queue of the same size that the first group takes over, so a
// service may publish before it runs its handlers.
//
// # Order and redelivery
//
// A subscription delivers the next message only after the previous one was
// acked; a nacked message is delivered again at once (the bus's middleware
// stack waits before it nacks: middleware.NackDelay), before any later
// one. One subscription per group therefore sees its messages in publish
// order. Subscriptions of the same group compete.
//
// # Shutdown
//
// [Broker.StopFetching] and [Broker.Drain] let the bus drain: in-flight
// messages are still acked, nothing new is delivered, and subscription
// channels stay open until the subscriber closes (a closed channel would make
// Watermill's router cancel the handlers still draining). A message in flight
// when its subscription ends is kept for the group's next subscription.
// Nothing is kept across a process restart.
package memory
