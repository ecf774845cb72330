package frontend

import (
	"net/http"
	"time"

	"hafe.dev/hafe/api"

	backendext "hafe.dev/hafe/backend-ext"
)

func (s *Server) listMembers(w http.ResponseWriter, r *http.Request) {
	ms, err := backendext.ListMembers(r.Context(), s.ctl, s.cfg.Executor.OwnerLiveness)
	if err != nil {
		s.refuse(w, refuse(503, "database_unavailable", "%v", err))
		return
	}
	out := []memberJSON{}
	for _, m := range ms {
		out = append(out, toMemberJSON(m))
	}
	writeJSON(w, 200, map[string]any{"members": out, "self": s.cfg.ID})
}

// drain starts draining; with ?wait=DURATION (at most 10m) it answers
// once drained (200) or when the wait is over (202).
func (s *Server) drain(w http.ResponseWriter, r *http.Request) {
	var wait time.Duration
	if v := r.URL.Query().Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > 10*time.Minute {
			s.refuse(w, refuse(400, "bad_wait", "wait=%q: want a duration from 0s to 10m, e.g. 30s", v))
			return
		}
		wait = d
	}
	done := s.Drain()
	s.log.Info("draining on operator request")
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	case <-r.Context().Done():
	}
	body := api.DrainStatus{Status: "draining", BatchesInFlight: s.batches.running(), MTCPConnections: s.mtcpConns()}
	select {
	case <-done:
		body.Status = "drained"
		writeJSON(w, 200, body)
	default:
		writeJSON(w, 202, body)
	}
}

// mtcpConns counts the MTCP connections served here now.
func (s *Server) mtcpConns() int {
	if ln := s.mtcp.Load(); ln != nil {
		return ln.NumConns()
	}
	return 0
}

func (s *Server) runGC(w http.ResponseWriter, r *http.Request) {
	n, err := s.collect(r.Context())
	if err != nil {
		s.refuse(w, refuse(503, "database_unavailable", "%v", err))
		return
	}
	writeJSON(w, 200, map[string]any{"removed_rows": n, "retention_seconds": s.cfg.Retention.Seconds()})
}
