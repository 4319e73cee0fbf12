package kafka

import (
	"testing"
	"time"

	"github.com/IBM/sarama"
)

// The subscribers' Sarama configuration starts new groups at the oldest
// offset. (The publisher's acks=all and idempotence are checked on the wire:
// TestPublisherIsIdempotentWithAcksAll.)
func TestSaramaConfigDefaults(t *testing.T) {
	cfg := Config{Brokers: []string{"127.0.0.1:9092"}}.withDefaults()

	c, err := cfg.consumerSaramaConfig()
	if err != nil {
		t.Fatal(err)
	}
	if c.Consumer.Offsets.Initial != sarama.OffsetOldest {
		t.Errorf("Offsets.Initial %d, want OffsetOldest", c.Consumer.Offsets.Initial)
	}
	if c.ClientID != "busline" {
		t.Errorf("ClientID %q", c.ClientID)
	}
	if !c.Consumer.Return.Errors {
		t.Error("Consumer.Return.Errors off")
	}
	if c.Consumer.Group.Rebalance.Timeout != 60*time.Second {
		t.Errorf("Rebalance.Timeout %v, want 60s", c.Consumer.Group.Rebalance.Timeout)
	}

	cfg.InitialOffset = "newest"
	c, err = cfg.consumerSaramaConfig()
	if err != nil {
		t.Fatal(err)
	}
	if c.Consumer.Offsets.Initial != sarama.OffsetNewest {
		t.Errorf("Offsets.Initial %d, want OffsetNewest", c.Consumer.Offsets.Initial)
	}
	if cfg.NackDelay <= 0 {
		t.Errorf("default NackDelay %v", cfg.NackDelay)
	}
}

func TestSaramaConfigSecurity(t *testing.T) {
	for _, mech := range []string{"PLAIN", "scram-sha-256", "SCRAM-SHA-512"} {
		cfg := Config{
			Brokers: []string{"127.0.0.1:9092"},
			TLS:     TLSConfig{Enabled: true, ServerName: "kafka"},
			SASL:    SASLConfig{Mechanism: mech, User: "u", Password: "p"},
		}.withDefaults()
		for name, build := range map[string]func() (*sarama.Config, error){
			"consumer": cfg.consumerSaramaConfig,
		} {
			sc, err := build()
			if err != nil {
				t.Fatalf("%s %s: %v", mech, name, err)
			}
			if !sc.Net.TLS.Enable || sc.Net.TLS.Config == nil || sc.Net.TLS.Config.ServerName != "kafka" {
				t.Errorf("%s %s: TLS not configured", mech, name)
			}
			if !sc.Net.SASL.Enable || sc.Net.SASL.User != "u" || sc.Net.SASL.Password != "p" {
				t.Errorf("%s %s: SASL not configured", mech, name)
			}
			if mech != "PLAIN" && sc.Net.SASL.SCRAMClientGeneratorFunc == nil {
				t.Errorf("%s %s: no SCRAM client", mech, name)
			}
		}
	}
}
