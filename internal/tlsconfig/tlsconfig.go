// Package tlsconfig turns the TLS settings of Busline's broker configurations
// into a *tls.Config.
package tlsconfig

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// Config holds TLS settings for a broker connection. The zero value means no
// TLS.
type Config struct {
	// Enabled turns TLS on. Zero: off.
	Enabled bool
	// CAFile is a PEM file of CAs to trust. Empty: the system pool.
	CAFile string
	// CertFile and KeyFile are a PEM client certificate and key for mutual
	// TLS. Empty: no client certificate. Both or neither must be set.
	CertFile string
	// KeyFile is the PEM private key of CertFile.
	KeyFile string
	// ServerName overrides the name checked against the server certificate.
	// Empty: the host dialled.
	ServerName string
	// InsecureSkipVerify disables server certificate checks. Never use it in
	// production.
	InsecureSkipVerify bool
}

// Validate reports every problem of c at once.
func (c Config) Validate() error {
	if !c.Enabled {
		if c.CAFile != "" || c.CertFile != "" || c.KeyFile != "" {
			return errors.New("TLS files are set but TLS is not enabled")
		}
		return nil
	}
	var errs []error
	if (c.CertFile == "") != (c.KeyFile == "") {
		errs = append(errs, errors.New("TLS cert file and key file must be set together"))
	}
	for _, f := range []string{c.CAFile, c.CertFile, c.KeyFile} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			errs = append(errs, fmt.Errorf("TLS file: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Load builds the *tls.Config, or returns nil when TLS is off.
func (c Config) Load() (*tls.Config, error) {
	if !c.Enabled {
		return nil, nil
	}
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         c.ServerName,
		InsecureSkipVerify: c.InsecureSkipVerify, //nolint:gosec // documented opt-in
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("TLS CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("TLS CA file %s: no PEM certificates", c.CAFile)
		}
		cfg.RootCAs = pool
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("TLS client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}
