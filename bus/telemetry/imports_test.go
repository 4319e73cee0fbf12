package telemetry_test

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestNoBrokerImports checks that the telemetry learns about brokers only
// through package bus/broker: no file of the package imports a broker's
// own package.
func TestNoBrokerImports(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			for _, b := range []string{"/bus/memory", "/bus/kafka", "/bus/amqp"} {
				if strings.HasPrefix(path, "github.com/busline/busline"+b) {
					t.Errorf("%s imports %s: brokers describe themselves through bus/broker", f, path)
				}
			}
		}
	}
}
