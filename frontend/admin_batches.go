package frontend

import (
	"encoding/json"
	"errors"
	"hafe.dev/hafe/api"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	backendext "hafe.dev/hafe/backend-ext"
)

// maxBatchList bounds GET /admin/batches?limit=.
const maxBatchList = 1000

// timeFormat is how admin answers write times: UTC, milliseconds.
const timeFormat = "2006-01-02T15:04:05.000Z"

// batchJSON is a batch in admin answers.
type batchJSON = api.BatchInfo

// splitScopedKey undoes postBatch's "<scope>:<key>": scope is "open" or
// "token:NAME", NAME without a colon. client is "open" or the token's NAME.
func splitScopedKey(stored string) (client, key string) {
	if rest, ok := strings.CutPrefix(stored, "token:"); ok {
		client, key, _ = strings.Cut(rest, ":")
		return client, key
	}
	client, key, _ = strings.Cut(stored, ":")
	return client, key
}

func toBatchJSON(b backendext.BatchInfo) batchJSON {
	client, key := splitScopedKey(b.IdemKey)
	return batchJSON{
		ID: b.ID, State: b.State, IdempotencyKey: key, Client: client, Owner: b.Owner, OwnerAlive: b.OwnerAlive,
		Epoch: b.Epoch, Transactions: b.Transactions, SlotsDone: b.SlotsDone, Committed: b.Committed, Aborted: b.Aborted,
		CreatedAt: b.CreatedAt.UTC().Format(timeFormat), UpdatedAt: b.UpdatedAt.UTC().Format(timeFormat),
	}
}

// listBatches answers GET /admin/batches?state=&owner=&older_than=&key=&limit=.
func (s *Server) listBatches(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := backendext.BatchFilter{State: q.Get("state"), Owner: q.Get("owner"), KeySuffix: q.Get("key"), Limit: 100}
	switch f.State {
	case "", backendext.BatchRunning, backendext.BatchDone, backendext.BatchAbandoned:
	default:
		s.refuse(w, refuse(400, "bad_filter", "state must be running, done or abandoned, not %q", f.State))
		return
	}
	if v := q.Get("older_than"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			s.refuse(w, refuse(400, "bad_filter", "older_than must be a duration such as 90s, 10m or 2h, not %q", v))
			return
		}
		f.OlderThan = d
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxBatchList {
			s.refuse(w, refuse(400, "bad_filter", "limit must be 1 to %d, not %q", maxBatchList, v))
			return
		}
		f.Limit = n
	}
	bs, err := backendext.ListBatches(r.Context(), s.ctl, f, s.cfg.Executor.OwnerLiveness)
	if err != nil {
		s.refuse(w, refuse(503, "database_unavailable", "%v", err))
		return
	}
	out := []batchJSON{}
	for _, b := range bs {
		j := toBatchJSON(b)
		if f.KeySuffix != "" && j.IdempotencyKey != f.KeySuffix {
			continue // a longer key that ends the same way
		}
		out = append(out, j)
	}
	writeJSON(w, 200, map[string]any{"batches": out, "limit": f.Limit})
}

// getBatch answers GET /admin/batches/{id}: the batch, its takeovers and
// its recorded outcomes (the lines clients were sent).
func (s *Server) getBatch(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	b, err := backendext.GetBatchInfo(r.Context(), s.ctl, id, s.cfg.Executor.OwnerLiveness)
	if errors.Is(err, backendext.ErrNoBatch) {
		s.refuse(w, refuse(404, "no_such_batch", "no batch %q", id))
		return
	}
	if err != nil {
		s.refuse(w, refuse(400, "bad_batch_id", "%v", err))
		return
	}
	ts, err := backendext.ListTakeovers(r.Context(), s.ctl, id)
	if err != nil {
		s.refuse(w, refuse(503, "database_unavailable", "%v", err))
		return
	}
	os, err := backendext.ListOutcomes(r.Context(), s.ctl, id)
	if err != nil {
		s.refuse(w, refuse(503, "database_unavailable", "%v", err))
		return
	}
	takeovers := make([]takeoverJSON, len(ts))
	for i, t := range ts {
		takeovers[i] = toTakeoverJSON(t)
	}
	reports := make([]json.RawMessage, len(os))
	for i, o := range os {
		reports[i] = o.Report
	}
	writeJSON(w, 200, struct {
		batchJSON
		Takeovers []takeoverJSON    `json:"takeovers"`
		Outcomes  []json.RawMessage `json:"outcomes"`
	}{toBatchJSON(b), takeovers, reports})
}
