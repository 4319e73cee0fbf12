// Package handlers adapts typed, context-first Go functions to Busline
// handlers: generic adapters that decode and upcast versioned events through
// the schema registry, and batch handlers.
package handlers
