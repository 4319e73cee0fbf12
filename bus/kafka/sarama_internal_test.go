package kafka

import (
	"testing"
	"time"

	"github.com/IBM/sarama"
)

// The Sarama configurations carry the safe defaults: acks=all, idempotence
// (with what Sarama requires for it), new groups at the oldest offset.
func TestSaramaConfigDefaults(t *testing.T) {
	cfg := Config{Brokers: []string{"127.0.0.1:9092"}}.withDefaults()

	p, err := cfg.producerSaramaConfig()
	if err != nil {
		t.Fatal(err)
	}
	if p.Producer.RequiredAcks != sarama.WaitForAll {
		t.Errorf("RequiredAcks %v, want WaitForAll", p.Producer.RequiredAcks)
	}
	if !p.Producer.Idempotent {
		t.Error("producer not idempotent")
	}
	if p.Net.MaxOpenRequests != 1 || p.Producer.Retry.Max < 1 || !p.Version.IsAtLeast(sarama.V0_11_0_0) {
		t.Errorf("idempotence prerequisites: MaxOpenRequests %d, Retry.Max %d, Version %v",
			p.Net.MaxOpenRequests, p.Producer.Retry.Max, p.Version)
	}
	if !p.Producer.Return.Successes {
		t.Error("Return.Successes off: the sync producer needs it")
	}
	if p.ClientID != "busline" {
		t.Errorf("ClientID %q", p.ClientID)
	}

	c, err := cfg.consumerSaramaConfig()
	if err != nil {
		t.Fatal(err)
	}
	if c.Consumer.Offsets.Initial != sarama.OffsetOldest {
		t.Errorf("Offsets.Initial %d, want OffsetOldest", c.Consumer.Offsets.Initial)
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
			"producer": cfg.producerSaramaConfig,
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
