// Package broker is the boundary between package bus and the brokers it
// runs on (bus/memory, bus/kafka, bus/amqp): the [Broker] interface every
// broker implements, and the optional capabilities a broker may add, each a
// small interface that the bus discovers with a type assertion, like
// database/sql/driver's Pinger or SessionResetter.
//
// # Capabilities
//
//   - [Configurable]: subscribers that take a handler's [SubscriberOptions]
//     (ordering, batch delivery, transactions). Without it, every handler
//     gets [Broker.Subscriber], which hands out one message at a time, in
//     order: that satisfies every ordering.
//   - [Transactional]: handlers that run in the broker's transactions, whose
//     failed attempts' outputs the bus drops.
//   - [Drainer]: the broker stops fetching and waits for the messages in
//     flight itself. Without it, the bus counts them at its subscribers.
//   - [QueueDepther], [Lagger]: the backlog, as queue depths or as consumer
//     lag per partition, for the bus's gauges.
//   - [Browser]: reading a group's backlog without consuming it, for the
//     dead-letter tool (cmd/busline).
//
// # Errors
//
// Every broker returns [ErrClosed] (or an error wrapping it) once closed, and
// a *[PublishError] when some messages of a Publish call were not stored, so
// that errors.Is and errors.As work the same on every broker.
//
// # Adding a broker
//
// A broker is a package with a Config (validated with a Validate method
// reporting every problem at once) and a constructor returning a type that
// implements [Broker] and the capabilities it has, each asserted at compile
// time (var _ broker.Drainer = (*Broker)(nil)). Package bus maps a name to
// it in one table (bus/brokers.go), the one place that names brokers.
package broker
