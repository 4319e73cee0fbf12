package amqp

import (
	"net/url"
	"strconv"
)

// Client connection names: the connection_name client property of the
// broker's two connections (the RabbitMQ management UI shows them), and
// the messaging.client.id of its send and process spans.
const (
	PublishConnectionName = publishConnectionName
	ConsumeConnectionName = consumeConnectionName
)

// ServerAddress returns the host and port of the RabbitMQ server c.URL
// names, for the server.address and server.port span attributes: the
// URL's port, else 5671 for amqps (or TLS.Enabled) and 5672 for amqp. It
// returns "" and 0 for a URL it cannot parse.
func (c Config) ServerAddress() (host string, port int) {
	u, err := url.Parse(c.URL)
	if err != nil || u.Host == "" {
		return "", 0
	}
	host = u.Hostname()
	if p, err := strconv.Atoi(u.Port()); err == nil {
		return host, p
	}
	if u.Scheme == "amqps" || c.TLS.Enabled {
		return host, 5671
	}
	return host, 5672
}
