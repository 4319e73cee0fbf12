// Package schema holds Busline's event envelope (CloudEvents 1.0 attributes in
// binary content mode), the schema-version registry that routes versioned
// events to Go types, the upcasters between versions, and the codecs that
// turn values into payloads.
package schema
