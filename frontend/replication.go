package frontend

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/txn"
)

// What a front-end promises about a reported commit depends on the
// database's replication: with a synchronous standby attached a commit is
// on two servers before it is reported, and survives the promotion of the
// standby; otherwise the newest reported commits can vanish with a failed
// primary. The front-end reads the settings at start, after the database
// came back and every replicationEvery, and says which promise holds: a log
// line when it changes, the readyz "replication" field, the
// hafe_replication_promise gauge. With Config.RequireSyncReplication
// readyz fails unless the promise is "sync".
//
// When the promise did not hold and a failover lost outcomes a client had
// been told of, the batch ends with a reports_lost line (never running the
// lost slots again), the error is logged, counted
// (hafe_lost_reports_total) and listed on /admin/lost-reports.

// replicationEvery is how often the replication settings are read again
// while the database answers.
const replicationEvery = 10 * time.Second

// replicationWatch holds the last reading.
type replicationWatch struct {
	mu      sync.Mutex
	r       backendext.Replication
	err     error
	at      time.Time
	promise string
	// stale: the database was lost since the last reading.
	stale bool
}

func (w *replicationWatch) get() (backendext.Replication, string, error, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.r, w.promise, w.err, w.at
}

// replicationPromises are the values of the hafe_replication_promise
// gauge's promise label.
var replicationPromises = []string{backendext.PromiseSync, backendext.PromiseSyncNoStandby, backendext.PromiseAsync, backendext.PromiseUnknown}

func newPromiseGauge() *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "hafe_replication_promise",
		Help: "1 for the durability promise that holds for the commits this front-end reports, 0 for the others: sync (a synchronous standby has every reported commit: it survives a failover), sync_no_standby (commits wait for a synchronous standby, none is attached), async (a failover can lose the newest reported commits), unknown.",
	}, []string{"promise"})
	for _, p := range replicationPromises {
		g.WithLabelValues(p)
	}
	return g
}

// CheckReplication reads the replication settings now, logs the promise
// if it changed, and returns it.
func (s *Server) CheckReplication(ctx context.Context) (backendext.Replication, string, error) {
	r, err := backendext.ReadReplication(ctx, s.ctl)
	promise := backendext.PromiseUnknown
	if err == nil {
		promise = r.Promise()
	}
	w := &s.replication
	w.mu.Lock()
	changed := promise != w.promise
	w.r, w.err, w.at, w.promise, w.stale = r, err, time.Now(), promise, false
	w.mu.Unlock()
	for _, p := range replicationPromises {
		v := 0.0
		if p == promise {
			v = 1
		}
		s.metrics.promise.WithLabelValues(p).Set(v)
	}
	switch {
	case err != nil:
		s.log.Warn("cannot read the database's replication settings", "err", err)
	case !changed:
	case promise == backendext.PromiseSync:
		s.log.Info("durability: reported commits survive a failover: "+r.Explain(), "promise", promise)
	default:
		s.log.Warn("durability: a failover to a standby can lose reported commits or stall: "+r.Explain(), "promise", promise,
			"require_sync_replication", s.cfg.RequireSyncReplication)
	}
	return r, promise, err
}

// watchReplication reads the settings again when they are due: after the
// database was lost (it may be another server now) and every
// replicationEvery. Called after each successful heartbeat probe.
func (s *Server) watchReplication(ctx context.Context) {
	w := &s.replication
	w.mu.Lock()
	due := w.stale || w.at.IsZero() || time.Since(w.at) >= replicationEvery
	w.mu.Unlock()
	if due {
		s.CheckReplication(ctx)
	}
}

// probe pings the database on a control session and says which server run
// (backendext.ServerOf) answered.
func (s *Server) probe(ctx context.Context) (string, error) {
	c, err := s.ctl.Acquire(ctx)
	if err != nil {
		return "", err
	}
	defer c.Release()
	if err := c.Ping(ctx); err != nil {
		return "", err
	}
	return backendext.ServerOf(c.Conn().PgConn()), nil
}

// followServer notices a new server run behind the pools (a promoted
// standby, a restart): the replication settings are read again, and the
// sessions still on another run (Config.Sessions) are cut, so that the
// batches waiting on them settle on the new one now.
func (s *Server) followServer(server string) {
	if server == "" || server == s.server {
		return
	}
	first := s.server == ""
	s.server = server
	if first {
		return
	}
	s.databaseLost()
	n := 0
	if s.cfg.Sessions != nil {
		n = s.cfg.Sessions.DropNotOn(server)
	}
	s.log.Warn("the database is another server run now (a failover or a restart): sessions on the old one cut", "server", server, "sessions_cut", n)
}

// databaseLost marks the replication reading stale.
func (s *Server) databaseLost() {
	s.replication.mu.Lock()
	s.replication.stale = true
	s.replication.mu.Unlock()
}

// replicationDetail is readyz's "replication" field.
func (s *Server) replicationDetail() (map[string]any, bool) {
	r, promise, err, at := s.replication.get()
	d := map[string]any{"promise": promise, "required": s.cfg.RequireSyncReplication}
	if at.IsZero() {
		d["promise"] = backendext.PromiseUnknown
		d["detail"] = "not read yet"
		return d, !s.cfg.RequireSyncReplication
	}
	if err != nil {
		d["detail"] = err.Error()
	} else {
		d["detail"] = r.Explain()
		d["synchronous_standby_names"] = r.StandbyNames
		d["synchronous_commit"] = r.Commit
		d["standbys"] = r.Standbys
		if r.SyncVisible {
			d["sync_standbys"] = r.SyncStandbys
		}
	}
	d["checked_at"] = at.UTC().Format(time.RFC3339Nano)
	return d, !s.cfg.RequireSyncReplication || promise == backendext.PromiseSync
}

// LostReport is one batch whose reported outcomes a failover lost.
type LostReport struct {
	BatchID string `json:"batch_id"`
	// Reported is how many of its slots the client had been told of
	// (-1: unknown, a retry found the batch marked lost), Recorded how
	// many the database still holds.
	Reported   int       `json:"reported"`
	Recorded   int       `json:"recorded"`
	Missing    bool      `json:"batch_missing,omitempty"`
	Via        string    `json:"via"` // http or mtcp
	DetectedAt time.Time `json:"detected_at"`
}

// maxLostReports bounds the list /admin/lost-reports keeps.
const maxLostReports = 1000

type lostReports struct {
	mu    sync.Mutex
	list  []LostReport
	total int
}

// reportLost records and logs lost reports for batch, and returns the
// line that ends its client's stream.
func (s *Server) reportLost(lost *txn.LostReportsError, via string, attrs ...any) []byte {
	s.metrics.lostReports.Inc()
	r := LostReport{BatchID: lost.BatchID, Reported: lost.Reported, Recorded: lost.Recorded, Missing: lost.BatchMissing, Via: via, DetectedAt: time.Now().UTC()}
	s.lost.mu.Lock()
	s.lost.total++
	s.lost.list = append(s.lost.list, r)
	if len(s.lost.list) > maxLostReports {
		s.lost.list = s.lost.list[len(s.lost.list)-maxLostReports:]
	}
	s.lost.mu.Unlock()
	_, promise, _, _ := s.replication.get()
	s.log.Error("REPORTED OUTCOMES LOST in a database failover: the batch is stopped, not run again", append(attrs,
		"batch", lost.BatchID, "reported", lost.Reported, "recorded", lost.Recorded, "batch_missing", lost.BatchMissing, "via", via, "promise", promise)...)
	return errorLine("reports_lost", lost.Error()+"; the database no longer holds outcomes already reported on this stream (asynchronous replication lost them in a failover). The batch is stopped and will not run again: do not retry it, check its effects")
}

// listLostReports serves GET /admin/lost-reports: the batches whose
// reported outcomes a failover lost, newest last.
func (s *Server) listLostReports(w http.ResponseWriter, r *http.Request) {
	s.lost.mu.Lock()
	list := append([]LostReport{}, s.lost.list...)
	total := s.lost.total
	s.lost.mu.Unlock()
	_, promise, _, _ := s.replication.get()
	writeJSON(w, 200, map[string]any{"lost_reports": list, "total": total, "promise": promise})
}

// asLost returns err's *txn.LostReportsError, if it is one.
func asLost(err error) *txn.LostReportsError {
	var lost *txn.LostReportsError
	if errors.As(err, &lost) {
		return lost
	}
	return nil
}
