// Package crash holds Busline's crash-recovery tests (TestCrashRecovery*):
// a consumer process with a shared dedup store (Redis, PostgreSQL) is
// killed with SIGKILL in the middle of a stream and started again, on
// Kafka (kfake, run by the test process so that it outlives the consumer)
// and on RabbitMQ, and the tests measure how soon every message is handled
// after the restart, that none is lost, and how many were handled twice.
//
// The consumer is the test binary itself, run again with the environment
// variable BUSLINE_CRASH_CHILD set (see TestMain). The package has no
// non-test code.
package crash
