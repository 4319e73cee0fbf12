package bus

import (
	"slices"
	"strconv"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// TestSpanArgsAttrsOption checks that the boxed attribute options of the
// pooled span arguments always carry the attributes of the current span,
// also after the buffer grew past its pooled capacity.
func TestSpanArgsAttrsOption(t *testing.T) {
	a := spanArgsPool.New().(*spanArgs)
	check := func(n int, prefix string) {
		t.Helper()
		for i := range n {
			a.attrs = append(a.attrs, attribute.String(prefix+strconv.Itoa(i), prefix))
		}
		want := slices.Clone(a.attrs)
		cfg := trace.NewSpanStartConfig(a.attrsOption())
		got := cfg.Attributes()
		if !slices.Equal(got, want) {
			t.Fatalf("%d attributes %q: got %v, want %v", n, prefix, got, want)
		}
		putSpanArgs(a)
	}
	check(3, "a")
	check(3, "b") // the same boxed option, new values
	check(spanArgsCap+6, "c")
	check(3, "d") // the boxed options of the old array are gone
	check(0, "e")
	check(spanArgsCap, "f")
}
