package tlsconfig_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/busline/busline/internal/tlsconfig"
)

func TestValidate(t *testing.T) {
	if err := (tlsconfig.Config{}).Validate(); err != nil {
		t.Fatalf("zero config: %v", err)
	}
	if err := (tlsconfig.Config{CAFile: "ca.pem"}).Validate(); err == nil {
		t.Error("files without Enabled accepted")
	}
	err := tlsconfig.Config{Enabled: true, CertFile: "/nonexistent/cert.pem", CAFile: "/nonexistent/ca.pem"}.Validate()
	for _, want := range []string{"set together", "cert.pem", "ca.pem"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %q", err, want)
		}
	}
}

func TestLoad(t *testing.T) {
	if c, err := (tlsconfig.Config{}).Load(); c != nil || err != nil {
		t.Fatalf("disabled: %v, %v", c, err)
	}
	dir := t.TempDir()
	cert, key := writeSelfSigned(t, dir)
	c, err := tlsconfig.Config{Enabled: true, CAFile: cert, CertFile: cert, KeyFile: key, ServerName: "broker"}.Load()
	if err != nil {
		t.Fatal(err)
	}
	if c.RootCAs == nil || len(c.Certificates) != 1 || c.ServerName != "broker" || c.MinVersion == 0 {
		t.Fatalf("config %+v", c)
	}
	notPEM := filepath.Join(dir, "empty.pem")
	os.WriteFile(notPEM, []byte("not a certificate"), 0o600)
	if _, err := (tlsconfig.Config{Enabled: true, CAFile: notPEM}).Load(); err == nil || !strings.Contains(err.Error(), "no PEM") {
		t.Errorf("CA file without certificates: %v", err)
	}
}

func writeSelfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "broker"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return certFile, keyFile
}
