package bus_test

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/busline/busline/bus"
)

// The README's configuration table and bus.EnvVars, the one list of the
// variables ConfigFromEnv reads, agree: the same rows in the same order
// with the same defaults, and every variable the table names (also inside
// another's row, like the TLS files) is one the code reads. Every BUSLINE_*
// name in the package's sources is one of them, so a doc comment cannot
// name a variable that does not exist.
func TestEnvVarsMatchREADME(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	section := string(readme)
	start := strings.Index(section, "## Configuration")
	if start < 0 {
		t.Fatal("README has no Configuration section")
	}
	section = section[start+3:]
	section = section[:strings.Index(section, "\n## ")]

	name := regexp.MustCompile("BUSLINE_[A-Z0-9_]+")
	suffix := regexp.MustCompile("`(_[A-Z0-9_]+)`")
	var rows []bus.EnvVar
	mentioned := map[string]bool{}
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "| `BUSLINE_") {
			continue
		}
		cells := strings.Split(line, " | ")
		first := strings.Trim(strings.TrimPrefix(cells[0], "| "), "`")
		rows = append(rows, bus.EnvVar{Name: first, Default: cells[1]})
		for _, n := range name.FindAllString(line, -1) {
			mentioned[n] = true
		}
		for _, m := range suffix.FindAllStringSubmatch(line, -1) {
			mentioned[first+m[1]] = true
		}
	}

	var codeRows []bus.EnvVar
	code := map[string]bool{}
	for _, v := range bus.EnvVars() {
		code[v.Name] = true
		if v.Default != "" {
			codeRows = append(codeRows, v)
		}
	}
	if !slices.Equal(rows, codeRows) {
		t.Errorf("README rows (name, default) differ from bus.EnvVars:\nREADME %v\ncode   %v", rows, codeRows)
	}
	for n := range mentioned {
		if !code[n] {
			t.Errorf("README names %s, which ConfigFromEnv does not read", n)
		}
	}
	for n := range code {
		if !mentioned[n] {
			t.Errorf("ConfigFromEnv reads %s, which the README does not name", n)
		}
	}

	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range name.FindAllString(string(src), -1) {
			if !code[n] && !strings.HasSuffix(n, "_") {
				t.Errorf("%s names %s, which ConfigFromEnv does not read", f, n)
			}
		}
	}
}
