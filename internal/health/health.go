// Package health answers the bus's readiness and liveness checks over
// HTTP.
package health

import (
	"context"
	"encoding/json"
	"net/http"
	"time"
)

// Status is the JSON body of a check's answer.
type Status struct {
	// Status is "ok" or "unavailable".
	Status string `json:"status"`
	// Broker is the broker's name: "memory", "kafka" or "amqp".
	Broker string `json:"broker"`
	// Error says what is wrong when Status is "unavailable".
	Error string `json:"error,omitempty"`
}

// DefaultTimeout bounds a check when the request's context has no earlier
// deadline.
const DefaultTimeout = 5 * time.Second

// Handler answers 200 with {"status":"ok","broker":broker} when check
// returns nil, else 503 with the error in the body. The check runs with the
// request's context, bounded by timeout when it is positive.
func Handler(broker string, timeout time.Duration, check func(context.Context) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		if timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		st := Status{Status: "ok", Broker: broker}
		code := http.StatusOK
		if err := check(ctx); err != nil {
			st.Status, st.Error, code = "unavailable", err.Error(), http.StatusServiceUnavailable
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(st)
	})
}
