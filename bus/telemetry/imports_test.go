package telemetry_test

import (
	"go/build"
	"strings"
	"testing"
)

// TestNoBrokerImports checks that the telemetry learns about brokers only
// through package bus/broker: the package imports no broker's own package.
func TestNoBrokerImports(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range pkg.Imports {
		for _, b := range []string{"/bus/memory", "/bus/kafka", "/bus/amqp"} {
			if strings.HasPrefix(path, "github.com/busline/busline"+b) {
				t.Errorf("bus/telemetry imports %s: brokers describe themselves through bus/broker", path)
			}
		}
	}
	if len(pkg.Imports) == 0 {
		t.Fatal("no imports found: the test reads the wrong directory")
	}
}
