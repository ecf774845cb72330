package frontend

import (
	"net/http"
	"time"

	backendext "hafe.dev/hafe/backend-ext"
)

// overviewLimit bounds each list of GET /admin/overview: the dashboard
// shows the latest few, and a poll every couple of seconds must stay cheap.
const overviewLimit = 20

// memberJSON is a front-end in admin answers. HeartbeatAgeSeconds is by
// the database's clock, so a browser's skewed clock does not age members.
type memberJSON struct {
	ID                  string  `json:"id"`
	HTTPAddr            string  `json:"http_addr"`
	Load                float64 `json:"load"`
	Draining            bool    `json:"draining"`
	Alive               bool    `json:"alive"`
	HeartbeatAt         string  `json:"heartbeat_at"`
	HeartbeatAgeSeconds float64 `json:"heartbeat_age_seconds"`
	MTCPAddr            string  `json:"mtcp_addr,omitempty"`
	MTCPConnections     int     `json:"mtcp_connections"`
	// Committed and Aborted are the transactions the member executed
	// since it started, as of its last heartbeat.
	Committed int64 `json:"committed"`
	Aborted   int64 `json:"aborted"`
}

func toMemberJSON(m backendext.Member) memberJSON {
	return memberJSON{m.ID, m.HTTPAddr, m.Load, m.Draining, m.Alive, m.HeartbeatAt.UTC().Format(timeFormat), m.HeartbeatAge.Seconds(),
		m.MTCPAddr, m.MTCPConns, m.Committed, m.Aborted}
}

// migrationJSON is an MTCP migration in admin answers, with the phases
// the front-end that took the connection measured.
type migrationJSON struct {
	ConnID          string `json:"conn_id"`
	From            string `json:"from"`
	To              string `json:"to"`
	TakenBy         string `json:"taken_by"`
	Mode            string `json:"mode"`
	Trigger         string `json:"trigger"`
	Error           string `json:"error,omitempty"`
	PrepareMicros   int64  `json:"prepare_us"`
	WaitMicros      int64  `json:"wait_us"`
	ReinstateMicros int64  `json:"reinstate_us"`
	StateBytes      int    `json:"state_bytes"`
	At              string `json:"at"`
}

func toMigrationJSON(m backendext.Migration) migrationJSON {
	return migrationJSON{m.ConnID, m.From, m.To, m.TakenBy, m.Mode, m.Trigger, m.Err,
		m.Prepare.Microseconds(), m.Wait.Microseconds(), m.Reinstate.Microseconds(), m.StateBytes, m.At.UTC().Format(timeFormat)}
}

// takeoverJSON is a claim of a batch by a new owner in admin answers.
type takeoverJSON struct {
	BatchID        string `json:"batch_id,omitempty"`
	Epoch          int64  `json:"epoch"`
	PreviousOwner  string `json:"previous_owner"`
	Owner          string `json:"owner"`
	FencedSessions int    `json:"fenced_sessions"`
	At             string `json:"at"`
}

func toTakeoverJSON(t backendext.Takeover) takeoverJSON {
	return takeoverJSON{t.BatchID, t.Epoch, t.PreviousOwner, t.Owner, t.FencedSessions, t.At.UTC().Format(timeFormat)}
}

// countersJSON are this front-end's own counters (the same as /metrics),
// for the dashboard's rates: it differentiates successive answers.
type countersJSON struct {
	Committed         float64            `json:"committed"`
	Aborted           float64            `json:"aborted"`
	Replayed          float64            `json:"replayed"`
	BatchesInFlight   float64            `json:"batches_in_flight"`
	Takeovers         float64            `json:"takeovers"`
	FenceTerminations map[string]float64 `json:"fence_terminations"`
}

// counters reads the executed transactions, takeovers and fences from
// the registry, so the numbers are those /metrics shows.
func (s *Server) counters() countersJSON {
	c := countersJSON{FenceTerminations: map[string]float64{}}
	families, _ := s.metrics.registry.Gather()
	for _, f := range families {
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			switch f.GetName() {
			case "hafe_transactions_total":
				v := m.GetCounter().GetValue()
				switch {
				case labels["source"] == "replayed":
					c.Replayed += v
				case labels["result"] == "committed":
					c.Committed += v
				case labels["result"] == "aborted":
					c.Aborted += v
				}
			case "hafe_batches_in_flight":
				c.BatchesInFlight = m.GetGauge().GetValue()
			case "hafe_batch_takeovers_total":
				c.Takeovers = m.GetCounter().GetValue()
			case "hafe_fence_terminations_total":
				c.FenceTerminations[labels["kind"]] = m.GetCounter().GetValue()
			}
		}
	}
	return c
}

// overview answers GET /admin/overview: what the dashboard shows, in one
// request per refresh. Members, unfinished batches and takeovers are the
// cluster's, read from the database; counters are this front-end's.
func (s *Server) overview(w http.ResponseWriter, r *http.Request) {
	liveness := s.cfg.Executor.OwnerLiveness
	ms, err := backendext.ListMembers(r.Context(), s.ctl, liveness)
	if err != nil {
		s.refuse(w, refuse(503, "database_unavailable", "%v", err))
		return
	}
	members := []memberJSON{}
	for _, m := range ms {
		members = append(members, toMemberJSON(m))
	}
	batches := []batchJSON{}
	for _, state := range []string{backendext.BatchRunning, backendext.BatchAbandoned} {
		bs, err := backendext.ListBatches(r.Context(), s.ctl, backendext.BatchFilter{State: state, Limit: overviewLimit}, liveness)
		if err != nil {
			s.refuse(w, refuse(503, "database_unavailable", "%v", err))
			return
		}
		for _, b := range bs {
			batches = append(batches, toBatchJSON(b))
		}
	}
	ts, err := backendext.ListRecentTakeovers(r.Context(), s.ctl, overviewLimit)
	if err != nil {
		s.refuse(w, refuse(503, "database_unavailable", "%v", err))
		return
	}
	takeovers := []takeoverJSON{}
	for _, t := range ts {
		takeovers = append(takeovers, toTakeoverJSON(t))
	}
	mgs, err := backendext.ListRecentMigrations(r.Context(), s.ctl, overviewLimit)
	if err != nil {
		s.refuse(w, refuse(503, "database_unavailable", "%v", err))
		return
	}
	migrations := []migrationJSON{}
	for _, m := range mgs {
		migrations = append(migrations, toMigrationJSON(m))
	}
	writeJSON(w, 200, map[string]any{
		"self":                   s.cfg.ID,
		"at":                     time.Now().UTC().Format(timeFormat),
		"owner_liveness_seconds": liveness.Seconds(),
		"members":                members,
		"batches":                batches,
		"takeovers":              takeovers,
		"migrations":             migrations,
		"counters":               s.counters(),
	})
}
