// Package middleware is Busline's opinionated handler middleware: correlation,
// dead-letter, retry with exponential backoff, dedup, throttling, circuit
// breaking, timeouts and panic recovery. Every constructor returns a Watermill
// [message.HandlerMiddleware] usable on any Watermill router.
package middleware

import "github.com/ThreeDotsLabs/watermill/message"

var _ message.HandlerMiddleware = nil
