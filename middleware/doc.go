// Package middleware is Busline's opinionated handler middleware: correlation,
// dead-letter, retry with exponential backoff, dedup, throttling, circuit
// breaking, timeouts, panic recovery and nack delay. Every constructor returns
// a Watermill [message.HandlerMiddleware] usable on any Watermill router, also
// those without arguments ([Recover]); policies with knobs take a config
// struct whose zero fields mean documented defaults. Invalid configuration
// panics at construction with a "middleware: ..." message.
//
// # Overview
//
// [Stack] composes every piece in the documented order; it is what the bus
// installs on each handler:
//
//	mw := middleware.Stack(middleware.StackConfig{
//		DeadLetter: middleware.DeadLetterConfig{Publisher: pub, Topic: "orders.dlq"},
//		Retry:      middleware.RetryConfig{MaxAttempts: 3},
//	})
//
// The pieces on their own:
//
//   - [Correlation] keeps or starts the correlation id and puts it, with the
//     handled message's id (the causation parent), into the handler's context
//     ([CorrelationIDFromContext], [CausationIDFromContext]); [Propagate]
//     stamps both on every message published under that context.
//   - [NackDelay] waits, with a bounded growing delay, before an error
//     escapes to the router, so a nacked message comes back later, not at once.
//   - [DeadLetter] publishes a message that failed for good to a dead-letter
//     topic with busline_dlq_* metadata and acks it; [Replay] turns a dead
//     letter back into a message for its original topic.
//   - [Dedup] is claim -> process -> commit against a [DedupStore]
//     ([MemoryStore]; Redis in middleware/dedupredis; PostgreSQL in
//     middleware/dedupsql).
//   - [Breaker] pauses consumption while a dependency fails instead of failing
//     messages.
//   - [Retry] retries transient errors in process with exponential backoff and
//     jitter; [AttemptFromContext] tells the handler which attempt it is.
//   - [Throttle] limits rate (token bucket) and concurrency per handler.
//   - [Timeout] bounds each attempt; [Recover] turns panics into errors.
//
// An [Observer] (each step's config has one, and [StackConfig].Observer
// is given to every step without its own) is told what the steps did; it
// never changes outcomes. Busline's telemetry implements it to count
// retries, dead letters, dedup hits and waits, throttle waits and breaker
// states.
//
// # Ordering
//
// The first middleware is the outermost. [Stack] uses this order, pinned by
// its Example:
//
//		correlation -> nack-delay -> dead-letter -> dedup -> breaker ->
//		retry -> throttle -> timeout -> recover -> handler
//
//	  - correlation is outermost so that every step sees the ids in the
//	    context, the dead-letter step included: a dead-letter copy of a
//	    message that started its correlation names it.
//	  - nack-delay sees every error that will make the router nack: failed
//	    dead-letter publishes, concurrent duplicates, dedup store failures,
//	    and all failures when no dead-letter publisher is set.
//	  - dead-letter is outside retry, so it sees the final error after all
//	    attempts (Watermill #645 is the trap of the opposite order), and
//	    outside dedup, so a dead-lettered message was released, not committed,
//	    and a replay of it is processed.
//	  - dedup is outside breaker and retry: one claim covers every attempt,
//	    the commit happens only after success, and duplicates are acked before
//	    they reach the breaker (a duplicate's success must not close a
//	    half-open breaker) or spend throttle tokens. Its claim is renewed by
//	    a heartbeat through retries and breaker pauses (see
//	    DedupConfig.Lease), and a message waiting for another delivery's
//	    claim spends no attempts.
//	  - breaker is outside retry, so a message that failed every attempt counts
//	    as one failure, and a paused message waits before its first attempt.
//	  - retry is outside throttle: each attempt, retries included, takes a
//	    token and a concurrency slot (retries load the dependency too), and no
//	    slot is held during a backoff wait.
//	  - throttle is outside timeout, so waiting for a token does not eat the
//	    attempt's time budget; timeout is inside retry, so it bounds each
//	    attempt, and each attempt gets a fresh context.
//	  - recover is innermost, so a panic becomes an ordinary error before
//	    timeout, retry, breaker and dead-letter see it.
//
// Telemetry (tracing and metrics) belongs outside the whole stack.
//
// # Errors
//
// Errors are classified, not matched by text:
//
//   - permanent: [Permanent](err), or a *schema.Error (bad input): no
//     retries, straight to the
//     dead-letter topic; counts as a success for the breaker (the dependency
//     answered).
//   - redelivery ([IsRedelivery]): [Redeliver](err), context cancellation, breaker rejection,
//     [ErrInProgress], [*DedupStoreError]: never dead-lettered, never counted
//     by the breaker; the message is nacked and comes back.
//   - transient: everything else: retried, then dead-lettered; counted as
//     a breaker failure.
//
// The dead-letter reason (busline_dlq_reason) is [ErrorType]: the ErrorType()
// string of the first error in the chain that has one (schema errors such as
// "schema_version_unknown", [ReasonPanic], [ReasonTimeout],
// [ReasonDedupKey]), else [ReasonPermanent], [ReasonRetriesExhausted] or
// [ReasonHandlerError]. Error texts are cut to a bounded length; panic stack
// traces stay in [PanicError].Stack, out of headers.
//
// # Delivery semantics
//
// At least once, with idempotent processing:
//
//   - A message is acked only after its handler succeeded, after it was a
//     duplicate of a message whose handling succeeded, or after it was
//     published to the dead-letter topic. A failed dead-letter publish nacks
//     it: nothing is lost.
//   - Messages returned by a failing handler are never published.
//   - Dedup never runs two deliveries of one key at once, and a failure
//     releases the claim: retries, redeliveries and replays are processed,
//     not swallowed. A claim is renewed while its handler runs; a crash
//     leaves claims that expire within their lease (10s by default), and a
//     redelivery of such a message waits for that, then is processed.
//   - Retry, breaker pauses, throttle waits and nack delays all hold the
//     message unacked on its handler goroutine. Subscribers deliver the next
//     message of a partition or queue only after an ack or nack, so these
//     waits are backpressure: consumption pauses, nothing is buffered.
//
// # Shutdown
//
// When the message's context is cancelled (the router closes, the bus shuts
// down), every wait in the stack ends at once and the context error is
// returned (errors.Is(err, context.Canceled)). It is never retried, never
// dead-lettered, never counted by the breaker and never delayed by
// [NackDelay]: the router nacks the message and the broker redelivers it
// later. A dedup claim is released (or committed) on a context detached from
// the cancellation.
//
// A graceful shutdown lets running handlers finish, but need not wait for a
// message that is only waiting: when StackConfig.Stopping is closed (the bus
// closes it when Close begins), a message the open breaker holds stops
// waiting with a redelivery error ([IsRedelivery]) and a failed message is
// nacked without its nack delay; a durable broker delivers either again
// later (the in-process broker keeps it queued, and loses it with the
// process).
package middleware
