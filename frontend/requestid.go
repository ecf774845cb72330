package frontend

import (
	"context"
	"crypto/rand"
	"log/slog"
	"net/http"
)

// maxRequestIDLength bounds an X-Request-Id taken from a client.
const maxRequestIDLength = 128

type requestLogKey struct{}

// withRequestID gives every request an id, the client's X-Request-Id when
// it sent a usable one (1..128 visible ASCII characters), else a random
// one; echoes it in the response's X-Request-Id; and puts a logger that
// adds request_id to every line in the request's context (see requestLog).
func (s *Server) withRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-Id")
		if !validRequestID(id) {
			id = rand.Text()[:16]
		}
		w.Header().Set("X-Request-Id", id)
		log := s.rootLog.With("request_id", id)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestLogKey{}, log)))
	})
}

func validRequestID(id string) bool {
	if id == "" || len(id) > maxRequestIDLength {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x21 || id[i] > 0x7e {
			return false
		}
	}
	return true
}

// requestLog is the request's logger for component, carrying its id.
func (s *Server) requestLog(r *http.Request, component string) *slog.Logger {
	log, ok := r.Context().Value(requestLogKey{}).(*slog.Logger)
	if !ok {
		log = s.rootLog
	}
	return log.With("component", component)
}
