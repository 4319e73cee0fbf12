package schema_test

import (
	"maps"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/busline/busline/schema"
)

// A correlation id is implied only when it equals a non-empty event id,
// and restoring gives back exactly what was left off.
func TestCorrelationImpliedAndRestored(t *testing.T) {
	for _, tc := range []struct {
		name    string
		md      message.Metadata
		implied bool
		want    message.Metadata // after RestoreCorrelation
	}{
		{"root", message.Metadata{schema.KeyID: "a", schema.KeyCorrelationID: "a"}, true,
			message.Metadata{schema.KeyID: "a", schema.KeyCorrelationID: "a"}},
		{"inherited", message.Metadata{schema.KeyID: "b", schema.KeyCorrelationID: "a"}, false,
			message.Metadata{schema.KeyID: "b", schema.KeyCorrelationID: "a"}},
		{"left off", message.Metadata{schema.KeyID: "c"}, false,
			message.Metadata{schema.KeyID: "c", schema.KeyCorrelationID: "c"}},
		{"no id", message.Metadata{schema.KeyCorrelationID: ""}, false,
			message.Metadata{schema.KeyCorrelationID: ""}},
		{"empty", message.Metadata{}, false, message.Metadata{}},
	} {
		if got := schema.CorrelationImplied(tc.md); got != tc.implied {
			t.Errorf("%s: CorrelationImplied = %v, want %v", tc.name, got, tc.implied)
		}
		md := maps.Clone(tc.md)
		if tc.implied {
			delete(md, schema.KeyCorrelationID) // as the marshalers send it
		}
		schema.RestoreCorrelation(md)
		if !maps.Equal(md, tc.want) {
			t.Errorf("%s: restored %v, want %v", tc.name, md, tc.want)
		}
	}
}
