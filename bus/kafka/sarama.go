package kafka

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// saramaVersion is the protocol version Sarama assumes. 2.8 is Sarama's own
// default (full protocol coverage) and is spoken by every Kafka since 2.8
// and by kfake.
var saramaVersion = sarama.V2_8_0_0

// Defaults of the zero Config fields that the Sarama configurations use.
const (
	defaultClientID  = "busline"
	defaultNackDelay = time.Second
	// defaultRebalanceTimeout is Sarama's default.
	defaultRebalanceTimeout = 60 * time.Second
	// reconnectRetrySleep is how long a subscriber waits before it tries
	// again to reconnect its consumer after a failure (Watermill's default).
	reconnectRetrySleep = time.Second
)

// withDefaults returns c with every zero field set to its documented default.
func (c Config) withDefaults() Config {
	if c.ClientID == "" {
		c.ClientID = defaultClientID
	}
	if c.InitialOffset == "" {
		c.InitialOffset = "oldest"
	}
	if c.Partitions == 0 {
		c.Partitions = 1
	}
	if c.ReplicationFactor == 0 {
		c.ReplicationFactor = 1
	}
	if c.NackDelay == 0 {
		c.NackDelay = defaultNackDelay
	}
	if c.RebalanceTimeout == 0 {
		c.RebalanceTimeout = defaultRebalanceTimeout
	}
	return c
}

// baseSaramaConfig is the subscribers' connection: version, client id, TLS
// and SASL. c has its defaults applied.
func (c Config) baseSaramaConfig() (*sarama.Config, error) {
	sc := sarama.NewConfig()
	sc.Version = saramaVersion
	sc.ClientID = c.ClientID

	tlsCfg, err := c.TLS.Load()
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	if tlsCfg != nil {
		sc.Net.TLS.Enable = true
		sc.Net.TLS.Config = tlsCfg
	}

	if mech := strings.ToUpper(c.SASL.Mechanism); mech != "" {
		sc.Net.SASL.Enable = true
		sc.Net.SASL.Mechanism = sarama.SASLMechanism(mech)
		sc.Net.SASL.User = c.SASL.User
		sc.Net.SASL.Password = c.SASL.Password
		switch mech {
		case sarama.SASLTypeSCRAMSHA256:
			sc.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient {
				return &scramClient{newMech: func(a scram.Auth) sasl.Mechanism { return a.AsSha256Mechanism() }}
			}
		case sarama.SASLTypeSCRAMSHA512:
			sc.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient {
				return &scramClient{newMech: func(a scram.Auth) sasl.Mechanism { return a.AsSha512Mechanism() }}
			}
		}
	}
	return sc, nil
}

// consumerSaramaConfig is the Sarama configuration of the subscribers. c has
// its defaults applied.
func (c Config) consumerSaramaConfig() (*sarama.Config, error) {
	sc, err := c.baseSaramaConfig()
	if err != nil {
		return nil, err
	}
	sc.Consumer.Return.Errors = true
	sc.Consumer.Group.Rebalance.Timeout = c.RebalanceTimeout
	sc.Consumer.Offsets.Initial = sarama.OffsetOldest
	if strings.EqualFold(c.InitialOffset, "newest") {
		sc.Consumer.Offsets.Initial = sarama.OffsetNewest
	}
	if err := sc.Validate(); err != nil {
		return nil, fmt.Errorf("kafka: consumer config: %w", err)
	}
	return sc, nil
}

// scramClient adapts franz-go's SCRAM implementation (RFC 5802, in the
// franz-go module Busline already depends on) to Sarama's SCRAMClient, so
// no extra SCRAM module is needed. One value serves one authentication.
type scramClient struct {
	newMech func(scram.Auth) sasl.Mechanism

	auth    scram.Auth
	session sasl.Session
	done    bool
}

// Begin records the credentials of the exchange.
func (s *scramClient) Begin(user, password, authzID string) error {
	s.auth = scram.Auth{User: user, Pass: password, Zid: authzID}
	return nil
}

// Step returns the client-first message on the first call, then answers
// each server message until the server-final message is verified.
func (s *scramClient) Step(challenge string) (string, error) {
	if s.session == nil {
		sess, first, err := s.newMech(s.auth).Authenticate(context.Background(), "")
		if err != nil {
			return "", err
		}
		s.session = sess
		return string(first), nil
	}
	if s.done {
		return "", errors.New("kafka: SCRAM exchange already done")
	}
	done, resp, err := s.session.Challenge([]byte(challenge))
	if err != nil {
		return "", err
	}
	s.done = done
	return string(resp), nil
}

// Done reports whether the server-final message was verified.
func (s *scramClient) Done() bool { return s.done }
