package middleware

import "errors"

// Permanent marks err as permanent: retrying cannot help, so the retry
// middleware gives up at once and the dead-letter middleware moves the
// message to its dead-letter destination. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// PermanentError is the error [Permanent] returns.
type PermanentError struct {
	Err error
}

// Error returns the wrapped error's text.
func (e *PermanentError) Error() string { return e.Err.Error() }

// Unwrap returns the wrapped error.
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent reports true: it marks the error as not worth retrying.
func (e *PermanentError) Permanent() bool { return true }

// IsPermanent reports whether err, or any error it wraps, is permanent: made
// by [Permanent] or of a type with a Permanent() bool method that returns
// true (schema errors are such types).
func IsPermanent(err error) bool {
	var p interface{ Permanent() bool }
	return errors.As(err, &p) && p.Permanent()
}
