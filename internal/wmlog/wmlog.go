// Package wmlog adapts log/slog to Watermill's logger.
package wmlog

import (
	"context"
	"log/slog"

	"github.com/ThreeDotsLabs/watermill"
)

// New adapts l for Watermill like watermill.NewSlogLogger,
// but asks the handler whether a level is enabled before it converts the
// fields: Watermill logs every message at trace level, and converting the
// fields first cost six allocations a message with the level off.
func New(l *slog.Logger) watermill.LoggerAdapter {
	return watermillLogger{inner: watermill.NewSlogLogger(l), l: l}
}

type watermillLogger struct {
	inner watermill.LoggerAdapter
	l     *slog.Logger
}

func (w watermillLogger) enabled(level slog.Level) bool {
	return w.l.Enabled(context.Background(), level)
}

func (w watermillLogger) Error(msg string, err error, fields watermill.LogFields) {
	w.inner.Error(msg, err, fields)
}

func (w watermillLogger) Info(msg string, fields watermill.LogFields) {
	if w.enabled(slog.LevelInfo) {
		w.inner.Info(msg, fields)
	}
}

func (w watermillLogger) Debug(msg string, fields watermill.LogFields) {
	if w.enabled(slog.LevelDebug) {
		w.inner.Debug(msg, fields)
	}
}

func (w watermillLogger) Trace(msg string, fields watermill.LogFields) {
	if w.enabled(watermill.LevelTrace) {
		w.inner.Trace(msg, fields)
	}
}

func (w watermillLogger) With(fields watermill.LogFields) watermill.LoggerAdapter {
	return watermillLogger{inner: w.inner.With(fields), l: w.l}
}
