// Package telemetry is Busline's tracing, metrics and logging of messages:
// the bus wires it (package bus keeps only the options users set) and the
// constants here are the names its spans and metrics carry, for users'
// dashboards and tests.
//
// # Conventions
//
// It follows the OpenTelemetry messaging semantic conventions (semconv
// 1.43.0, its schema URL on the tracer and meter):
//
//   - Publishing makes one "send {topic}" PRODUCER span per message
//     ("publish {exchange}" on RabbitMQ, whose conventions name the
//     operation so) and injects its context into the message's metadata
//     with the propagator: traceparent, tracestate, baggage. A message that
//     already carries a span context (forwarded, dead-lettered, replayed)
//     keeps it; its send span is then a CLIENT span linked to it.
//   - Each handler runs inside a "process {destination}" CONSUMER span, a
//     child of the producer's span and linked to it (NewRootOnProcess: link
//     only). The handler's ctx carries it, so what the handler publishes
//     with ctx is its child. Retries, dead letters, duplicates and throttle
//     waits are span events; a message a retry saved ends without error;
//     failures and dead letters set status Error and error.type (no
//     RecordError).
//   - Metrics: the four messaging metrics and busline.* (see the Metric*
//     constants and docs/monitoring.md). Measurements are recorded without
//     the span context: no exemplars, which keeps the hot path cheap.
//
// # Where the facts come from
//
// The telemetry names no broker. What the conventions ask about a broker
// and its messages (messaging.system, server, client ids, destination
// names, partition, offset, key, routing key, delivery tag) comes from the
// broker's [broker.Describer]; the Kafka consumer's gauges from its
// [broker.ConsumerStatser]; queue depth and consumer lag from its backlog
// methods, polled. What the middleware stack did (retries, dead letters,
// duplicates, throttle waits, breaker state) comes through
// [middleware.Observer], which [Handler] implements.
//
// # Providers
//
// Providers come from [Config] (the bus's WithTracerProvider,
// WithMeterProvider and WithPropagators options), else the globals,
// resolved once in [New]. No-op providers (the globals before they are
// set) switch tracing or metrics off entirely: nothing is added to
// messages or to the hot path. The default propagator is the global one
// once set, else W3C Trace Context plus Baggage, so traces cross brokers
// without any set-up.
package telemetry
