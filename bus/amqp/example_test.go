package amqp_test

import (
	"fmt"

	"github.com/busline/busline/bus/amqp"
)

// Every topic is a durable fanout exchange; every consumer group has a
// durable queue per topic, bound to it.
func ExampleQueueName() {
	fmt.Println(amqp.ExchangeName("orders"))
	fmt.Println(amqp.QueueName("orders", "billing"))
	// Output:
	// orders
	// orders.billing
}
