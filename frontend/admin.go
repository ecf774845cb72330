package frontend

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"

	backendext "hafe.dev/hafe/backend-ext"
)

func (s *Server) listMembers(w http.ResponseWriter, r *http.Request) {
	ms, err := backendext.ListMembers(r.Context(), s.ctl, s.cfg.Executor.OwnerLiveness)
	if err != nil {
		s.refuse(w, refuse(503, "database_unavailable", "%v", err))
		return
	}
	type member struct {
		ID          string  `json:"id"`
		HTTPAddr    string  `json:"http_addr"`
		Load        float64 `json:"load"`
		Draining    bool    `json:"draining"`
		Alive       bool    `json:"alive"`
		HeartbeatAt string  `json:"heartbeat_at"`
	}
	out := []member{}
	for _, m := range ms {
		out = append(out, member{m.ID, m.HTTPAddr, m.Load, m.Draining, m.Alive, m.HeartbeatAt.UTC().Format("2006-01-02T15:04:05.000Z")})
	}
	writeJSON(w, 200, map[string]any{"members": out, "self": s.cfg.ID})
}

// listBatches answers GET /admin/batches?state=running|done|abandoned&limit=N.
func (s *Server) listBatches(w http.ResponseWriter, r *http.Request) {
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			s.refuse(w, refuse(400, "bad_filter", "limit must be a number from 1 to 1000, not %q", v))
			return
		}
		limit = n
	}
	bs, err := backendext.ListBatchesInState(r.Context(), s.ctl, r.URL.Query().Get("state"), limit, s.cfg.Executor.OwnerLiveness)
	if errors.Is(err, backendext.ErrUnknownState) {
		s.refuse(w, refuse(400, "bad_filter", "%v", err))
		return
	}
	if err != nil {
		s.refuse(w, refuse(503, "database_unavailable", "%v", err))
		return
	}
	type batch struct {
		ID           string `json:"batch_id"`
		State        string `json:"state"`
		Transactions int    `json:"transactions"`
		Owner        string `json:"owner"`
		OwnerAlive   bool   `json:"owner_alive"`
		Epoch        int64  `json:"epoch"`
	}
	out := []batch{}
	for _, b := range bs {
		out = append(out, batch{b.ID, b.State, b.NumTxns, b.Owner, b.OwnerAlive, b.Epoch})
	}
	writeJSON(w, 200, map[string]any{"batches": out})
}

func (s *Server) getBatch(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	b, err := backendext.GetBatch(r.Context(), s.ctl, id, s.cfg.Executor.OwnerLiveness)
	if errors.Is(err, backendext.ErrNoBatch) {
		s.refuse(w, refuse(404, "no_such_batch", "no batch %q", id))
		return
	}
	if err != nil {
		s.refuse(w, refuse(400, "bad_batch_id", "%v", err))
		return
	}
	os, err := backendext.ListOutcomes(r.Context(), s.ctl, id)
	if err != nil {
		s.refuse(w, refuse(503, "database_unavailable", "%v", err))
		return
	}
	reports := make([]json.RawMessage, len(os))
	for i, o := range os {
		reports[i] = o.Report
	}
	writeJSON(w, 200, map[string]any{
		"batch_id": b.ID, "state": b.State, "transactions": b.NumTxns, "owner": b.Owner,
		"owner_alive": b.OwnerAlive, "epoch": b.Epoch, "outcomes": reports,
	})
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
