package frontend

import (
	"hafe.dev/hafe/api"
	"net/http"
	"time"

	backendext "hafe.dev/hafe/backend-ext"
)

// overviewLimit bounds each list of GET /admin/overview: the dashboard
// shows the latest few, and a poll every couple of seconds must stay cheap.
const overviewLimit = 20

// memberJSON is a front-end in admin answers. HeartbeatAgeSeconds is by
// the database's clock, so a browser's skewed clock does not age members.
type memberJSON = api.Member

func toMemberJSON(m backendext.Member) memberJSON {
	return memberJSON{ID: m.ID, HTTPAddr: m.HTTPAddr, Load: m.Load, Draining: m.Draining, Alive: m.Alive,
		HeartbeatAt: m.HeartbeatAt.UTC().Format(timeFormat), HeartbeatAgeSeconds: m.HeartbeatAge.Seconds(),
		MTCPAddr: m.MTCPAddr, MTCPConnections: m.MTCPConns, Committed: m.Committed, Aborted: m.Aborted}
}

// migrationJSON is an MTCP migration in admin answers, with the phases
// the front-end that took the connection measured.
type migrationJSON = api.Migration

func toMigrationJSON(m backendext.Migration) migrationJSON {
	return migrationJSON{ConnID: m.ConnID, From: m.From, To: m.To, TakenBy: m.TakenBy, Mode: m.Mode, Trigger: m.Trigger, Error: m.Err,
		PrepareMicros: m.Prepare.Microseconds(), WaitMicros: m.Wait.Microseconds(), ReinstateMicros: m.Reinstate.Microseconds(),
		StateBytes: m.StateBytes, At: m.At.UTC().Format(timeFormat)}
}

// takeoverJSON is a claim of a batch by a new owner in admin answers.
type takeoverJSON = api.Takeover

func toTakeoverJSON(t backendext.Takeover) takeoverJSON {
	return takeoverJSON{BatchID: t.BatchID, Epoch: t.Epoch, PreviousOwner: t.PreviousOwner, Owner: t.Owner,
		FencedSessions: t.FencedSessions, At: t.At.UTC().Format(timeFormat)}
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
