package kafka

import (
	"net"
	"strconv"
)

// ServerAddress returns the host and port of the first seed broker in
// c.Brokers, for the server.address and server.port span attributes (the
// semantic conventions ask for the address the client was configured
// with when the broker that served a request is not known). It returns ""
// and 0 when there is no broker or it is not host:port.
func (c Config) ServerAddress() (host string, port int) {
	if len(c.Brokers) == 0 {
		return "", 0
	}
	h, p, err := net.SplitHostPort(c.Brokers[0])
	if err != nil {
		return "", 0
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		return "", 0
	}
	return h, n
}

// EffectiveClientID returns the client id the broker's clients send:
// c.ClientID, or its default when zero. It is the messaging.client.id of
// the bus's Kafka spans.
func (c Config) EffectiveClientID() string { return c.withDefaults().ClientID }
