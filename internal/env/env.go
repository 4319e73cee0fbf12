// Package env reads the typed values of environment variables for
// bus.ConfigFromEnv.
package env

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/busline/busline/internal/tlsconfig"
)

// Reader reads typed values from the environment (through Lookup) and
// collects every malformed one. Its messages name the bus, whose
// configuration it reads.
type Reader struct {
	// Lookup is os.LookupEnv, or a stand-in in tests.
	Lookup func(string) (string, bool)
	errs   []error
}

// Err returns every malformed value's error, joined.
func (e *Reader) Err() error { return errors.Join(e.errs...) }

// Str returns the variable key, trimmed ("" when unset).
func (e *Reader) Str(key string) string {
	v, _ := e.Lookup(key)
	return strings.TrimSpace(v)
}

// List returns the comma-separated values of key, trimmed, empty ones left out.
func (e *Reader) List(key string) []string {
	var out []string
	for _, s := range strings.Split(e.Str(key), ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// Int returns the integer in key (0 when unset).
func (e *Reader) Int(key string) int { return parse(e, key, strconv.Atoi, "an integer") }

// Duration returns the Go duration in key, like 10s (0 when unset).
func (e *Reader) Duration(key string) time.Duration {
	return parse(e, key, time.ParseDuration, "a duration like 10s or 500ms")
}

// Bool returns the boolean in key (false when unset).
func (e *Reader) Bool(key string) bool {
	return parse(e, key, strconv.ParseBool, "a boolean (true or false)")
}

// parse returns the value of key parsed with p: the zero value when key is
// unset, or malformed (then recorded as not being what).
func parse[T any](e *Reader, key string, p func(string) (T, error), what string) T {
	var zero T
	v := e.Str(key)
	if v == "" {
		return zero
	}
	x, err := p(v)
	if err != nil {
		e.errs = append(e.errs, fmt.Errorf("bus: %s=%q is not %s", key, v, what))
		return zero
	}
	return x
}

// TLS returns the TLS configuration of the variables prefix (enabled or
// not) and prefix_CA_FILE, _CERT_FILE, _KEY_FILE, _SERVER_NAME and
// _INSECURE_SKIP_VERIFY.
func (e *Reader) TLS(prefix string) tlsconfig.Config {
	return tlsconfig.Config{
		Enabled:            e.Bool(prefix),
		CAFile:             e.Str(prefix + "_CA_FILE"),
		CertFile:           e.Str(prefix + "_CERT_FILE"),
		KeyFile:            e.Str(prefix + "_KEY_FILE"),
		ServerName:         e.Str(prefix + "_SERVER_NAME"),
		InsecureSkipVerify: e.Bool(prefix + "_INSECURE_SKIP_VERIFY"),
	}
}

// Durations returns the comma-separated Go durations in key: nil when
// unset, an empty (non-nil) list for "none".
func (e *Reader) Durations(key string) []time.Duration {
	v := e.Str(key)
	switch {
	case v == "":
		return nil
	case strings.EqualFold(v, "none"):
		return []time.Duration{}
	}
	var out []time.Duration
	for _, s := range strings.Split(v, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil {
			e.errs = append(e.errs, fmt.Errorf("bus: %s=%q is not a list of durations like 1s,10s,1m or none", key, v))
			return nil
		}
		out = append(out, d)
	}
	return out
}
