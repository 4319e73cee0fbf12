package bus_test

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The broker boundary: bus.New maps the configured broker name to a broker
// in one file, brokers.go; every other production file of package bus
// learns what a broker can do through package broker's interfaces. These
// tests read the package's source and fail when a file names a broker
// anyway.

// mappingFile is the one file that may name brokers.
const mappingFile = "brokers.go"

// brokerPackages are the import paths of the brokers.
var brokerPackages = []string{
	"github.com/busline/busline/bus/amqp",
	"github.com/busline/busline/bus/kafka",
	"github.com/busline/busline/bus/memory",
}

// configTypes are the identifiers of a broker package that bus may use
// outside the mapping: the types of Config's sections.
var configTypes = []string{"Config"}

// brokerNames are the constants naming brokers, and their values.
var brokerNames = map[string]string{"BrokerMemory": "memory", "BrokerKafka": "kafka", "BrokerAMQP": "amqp"}

func TestBrokerBoundary(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked := 0
	for _, path := range files {
		if strings.HasSuffix(path, "_test.go") || path == mappingFile {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		for _, s := range boundaryViolations(fset, f) {
			t.Errorf("%s: only %s may name a broker; use package broker's interfaces", s, mappingFile)
		}
	}
	if checked < 5 {
		t.Fatalf("checked %d files: not the package's directory?", checked)
	}
}

// TestBrokerBoundaryCatches proves the check finds each kind of violation.
func TestBrokerBoundaryCatches(t *testing.T) {
	for _, src := range []string{
		`func f(c Config) bool { return c.Broker == BrokerKafka }`,
		`func f(c Config) bool { return "amqp" != c.Broker }`,
		`func f(c Config) { switch c.Broker { case "x": } }`,
		`func f() string { return BrokerMemory }`,
		`func f() string { return "kafka" }`,
		`func f(b any) bool { _, ok := b.(*kafka.Broker); return ok }`,
		`func f() error { return amqp.ErrNacked }`,
		`var _ = memory.New`,
	} {
		file := "package bus\nimport (\n\t\"github.com/busline/busline/bus/amqp\"\n\t\"github.com/busline/busline/bus/kafka\"\n\t\"github.com/busline/busline/bus/memory\"\n)\n" +
			"var _, _, _ = amqp.Config{}, kafka.Config{}, memory.Config{}\n" + src + "\n"
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, "x.go", file, 0)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		if v := boundaryViolations(fset, f); len(v) == 0 {
			t.Errorf("%s: no violation found", src)
		}
	}
}

// boundaryViolations returns where f names a broker: a use of a broker
// package other than its config types, a use of a Broker* name constant
// or of a broker's name as a string, and a comparison or switch on a
// Broker field.
func boundaryViolations(fset *token.FileSet, f *ast.File) []string {
	var out []string
	report := func(n ast.Node, format string, args ...any) {
		out = append(out, fset.Position(n.Pos()).String()+": "+fmt.Sprintf(format, args...))
	}
	pkgs := map[string]bool{} // local names of the imported broker packages
	for _, imp := range f.Imports {
		path, _ := strconv.Unquote(imp.Path.Value)
		if !slices.Contains(brokerPackages, path) {
			continue
		}
		name := filepath.Base(path)
		if imp.Name != nil {
			name = imp.Name.Name
		}
		pkgs[name] = true
	}
	declared := map[*ast.Ident]bool{} // the Broker* constants' own names
	ast.Inspect(f, func(n ast.Node) bool {
		if vs, ok := n.(*ast.ValueSpec); ok {
			for _, id := range vs.Names {
				declared[id] = true
			}
			if len(vs.Names) == 1 && len(vs.Values) == 1 && brokerNames[vs.Names[0].Name] != "" {
				return false // the constant's declaration: its value is the name
			}
		}
		return true
	})
	isBrokerField := func(e ast.Expr) bool {
		s, ok := e.(*ast.SelectorExpr)
		return ok && s.Sel.Name == "Broker"
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.ValueSpec:
			if len(n.Names) == 1 && len(n.Values) == 1 && brokerNames[n.Names[0].Name] != "" {
				return false
			}
		case *ast.SelectorExpr:
			if id, ok := n.X.(*ast.Ident); ok && pkgs[id.Name] && !slices.Contains(configTypes, n.Sel.Name) {
				report(n, "uses %s.%s", id.Name, n.Sel.Name)
			}
		case *ast.Ident:
			if brokerNames[n.Name] != "" && !declared[n] {
				report(n, "uses %s", n.Name)
			}
		case *ast.BasicLit:
			if v, err := strconv.Unquote(n.Value); n.Kind == token.STRING && err == nil {
				for _, name := range brokerNames {
					if v == name {
						report(n, "names broker %q", v)
					}
				}
			}
		case *ast.BinaryExpr:
			if (n.Op == token.EQL || n.Op == token.NEQ) && (isBrokerField(n.X) || isBrokerField(n.Y)) {
				report(n, "compares a Broker field")
			}
		case *ast.SwitchStmt:
			if n.Tag != nil && isBrokerField(n.Tag) {
				report(n, "switches on a Broker field")
			}
		}
		return true
	})
	return out
}
