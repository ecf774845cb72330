package frontend

import (
	"net/http"

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

func (s *Server) drain(w http.ResponseWriter, r *http.Request) {
	s.Drain()
	s.log.Info("draining on operator request")
	writeJSON(w, 202, map[string]any{"status": "draining", "batches_in_flight": s.batches.running()})
}

func (s *Server) runGC(w http.ResponseWriter, r *http.Request) {
	n, err := s.collect(r.Context())
	if err != nil {
		s.refuse(w, refuse(503, "database_unavailable", "%v", err))
		return
	}
	writeJSON(w, 200, map[string]any{"removed_rows": n, "retention_seconds": s.cfg.Retention.Seconds()})
}
