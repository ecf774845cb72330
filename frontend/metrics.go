package frontend

import (
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/internal/buildinfo"
	"hafe.dev/hafe/mtcp"
	"hafe.dev/hafe/txn"
)

// metrics are one front-end's Prometheus metrics, in a registry of its own.
// It is the executor's txn.Observer, so transactions are counted as their
// outcomes become durable, not when their batch ends.
type metrics struct {
	registry       *prometheus.Registry
	batches        *prometheus.CounterVec
	transactions   *prometheus.CounterVec
	refused        *prometheus.CounterVec
	reported       prometheus.Counter
	resumed        prometheus.Counter
	batchSeconds   prometheus.Histogram
	takeovers      *prometheus.CounterVec
	mtcpMigrations *prometheus.CounterVec
	mtcpPhases     *prometheus.HistogramVec
	fenced         *prometheus.CounterVec
	retries        *prometheus.CounterVec
	dbUp           prometheus.Gauge
	dbRoundTrip    prometheus.Gauge
	httpSeconds    *prometheus.HistogramVec
	promise        *prometheus.GaugeVec
	lostReports    prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hafe_batches_total", Help: "Batches that ended on this front-end, by result (done, interrupted).",
		}, []string{"result"}),
		transactions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hafe_transactions_total",
			Help: "Transactions whose outcome this front-end reported, counted as each outcome is durable, by result (committed, aborted) and source (executed: recorded by this front-end; replayed: recorded earlier or elsewhere and reported again).",
		}, []string{"result", "source"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hafe_requests_refused_total", Help: "Requests refused before running anything, by error code.",
		}, []string{"code"}),
		reported: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hafe_reports_sent_total", Help: "Transaction report lines written to clients.",
		}),
		resumed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hafe_batches_resumed_total", Help: "Batches resumed from an earlier request with the same Idempotency-Key.",
		}),
		batchSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "hafe_batch_duration_seconds", Help: "Time from request to last line of a batch.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}),
		takeovers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hafe_batch_takeovers_total", Help: "Unfinished batches this front-end claimed from an earlier owner (or from none, after a release), by how the batch came here (migration: its MTCP connection moved here; retry: sent again with its Idempotency-Key).",
		}, []string{"via"}),
		mtcpMigrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hafe_mtcp_migrations_total",
			Help: "MTCP connection migrations this front-end took part in, by role (new_server: took the connection; origin: handed it over), trigger (redirect: this front-end asked the client to move, as a drain does; origin_down: taken from the database, its front-end did not answer; client: the client moved on its own, after a path failure or a slow path), mode (lazy: state from the origin; eager: from the database) and result (ok, failed).",
		}, []string{"role", "trigger", "mode", "result"}),
		mtcpPhases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hafe_mtcp_migration_seconds",
			Help:    "Phases of the MTCP migrations this front-end took part in: new server prepare (check the MIGRATE, ask for the state), wait (for the origin's or the database's answer) and reinstate (rebuild the connection, answer the client); origin prepare_reply (freeze the connection and take its state).",
			Buckets: prometheus.ExponentialBuckets(0.00001, 4, 10),
		}, []string{"phase"}),
		fenced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hafe_fence_terminations_total",
			Help: "Database sessions of a previous owner this front-end terminated to fence it, by kind (blocker: held the batch past --fence-grace; previous_run: left open by a run that is gone).",
		}, []string{"kind"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hafe_transaction_retries_total",
			Help: "Transactions tried again, by cause (serialization_failure, deadlock, database_lost).",
		}, []string{"cause"}),
		dbUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hafe_database_up", Help: "1 when the last probe of the database (every heartbeat) answered, else 0.",
		}),
		dbRoundTrip: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hafe_database_round_trip_seconds", Help: "Duration of the last successful database probe (a ping through the pool).",
		}),
		httpSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "hafe_http_request_duration_seconds", Help: "HTTP request durations, from the request to the end of the response, by route pattern, method and status code.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 11),
		}, []string{"route", "method", "code"}),
	}
	m.promise = newPromiseGauge()
	m.lostReports = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "hafe_lost_reports_total", Help: "Batches stopped because a database failover lost outcomes already reported to their client (asynchronous replication); see /admin/lost-reports.",
	})
	// Every label value that exists is there from the start, so a rate()
	// over a counter that has never moved is 0, not absent.
	for _, r := range []string{txn.StatusCommitted, txn.StatusAborted} {
		for _, s := range []string{"executed", "replayed"} {
			m.transactions.WithLabelValues(r, s)
		}
	}
	for _, c := range []string{txn.RetrySerialization, txn.RetryDeadlock, txn.RetryDatabaseLost} {
		m.retries.WithLabelValues(c)
	}
	for _, k := range []string{txn.FenceBlocker, txn.FencePreviousRun} {
		m.fenced.WithLabelValues(k)
	}
	for _, r := range []string{"done", "interrupted"} {
		m.batches.WithLabelValues(r)
	}
	bi := buildinfo.Read()
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "hafe_build_info", Help: "Always 1; the labels say which build runs.",
		ConstLabels: prometheus.Labels{"version": bi.Version, "revision": bi.ShortRevision(), "go": bi.Go},
	})
	build.Set(1)
	m.registry.MustRegister(m.batches, m.transactions, m.refused, m.reported, m.resumed, m.batchSeconds,
		m.takeovers, m.mtcpMigrations, m.mtcpPhases, m.fenced, m.retries, m.dbUp, m.dbRoundTrip, m.httpSeconds, m.promise, m.lostReports, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Outcome implements txn.Observer.
func (m *metrics) Outcome(status string, replayed bool) {
	source := "executed"
	if replayed {
		source = "replayed"
	}
	m.transactions.WithLabelValues(status, source).Inc()
}

// Retry implements txn.Observer.
func (m *metrics) Retry(cause string) { m.retries.WithLabelValues(cause).Inc() }

// TakeOver implements txn.Observer.
func (m *metrics) TakeOver(via string) { m.takeovers.WithLabelValues(via).Inc() }

// ObserveMigration counts an MTCP migration this front-end took part in
// and logs it; give it to the listener as ListenConfig.OnMigration.
func (s *Server) ObserveMigration(st mtcp.MigrationStats) {
	role, trigger, mode := "new_server", "client", st.Mode.String()
	if st.Role == mtcp.RoleOrigin {
		role = "origin"
	}
	switch {
	case st.Trigger == mtcp.TriggerRedirect:
		trigger = "redirect"
	case st.Role == mtcp.RoleNewServer && st.Mode == mtcp.ModeEager:
		trigger = "origin_down"
	}
	result := "ok"
	if st.Err != nil {
		result = "failed"
	}
	s.metrics.mtcpMigrations.WithLabelValues(role, trigger, mode, result).Inc()
	attrs := []any{"conn", st.ConnID.String(), "role", role, "trigger", trigger, "mode", mode, "from", st.From, "to", st.To, "state_bytes", st.StateBytes}
	if st.Role == mtcp.RoleOrigin {
		s.metrics.mtcpPhases.WithLabelValues("prepare_reply").Observe(st.PrepareReply.Seconds())
		attrs = append(attrs, "prepare_reply_us", st.PrepareReply.Microseconds())
	} else {
		s.metrics.mtcpPhases.WithLabelValues("prepare").Observe(st.PrepareRequest.Seconds())
		s.metrics.mtcpPhases.WithLabelValues("wait").Observe(st.WaitReply.Seconds())
		s.metrics.mtcpPhases.WithLabelValues("reinstate").Observe(st.Reinstate.Seconds())
		attrs = append(attrs, "prepare_us", st.PrepareRequest.Microseconds(), "wait_us", st.WaitReply.Microseconds(), "reinstate_us", st.Reinstate.Microseconds())
	}
	if st.Role == mtcp.RoleNewServer {
		m := backendext.Migration{ConnID: st.ConnID.String(), From: st.From, To: st.To, TakenBy: s.cfg.ID, Mode: mode, Trigger: trigger,
			Prepare: st.PrepareRequest, Wait: st.WaitReply, Reinstate: st.Reinstate, StateBytes: st.StateBytes}
		if st.Err != nil {
			m.Err = st.Err.Error()
		}
		select {
		case s.migrations <- m:
		default:
		}
	}
	if st.Err != nil {
		s.log.Warn("mtcp migration failed", append(attrs, "err", st.Err)...)
		return
	}
	s.log.Info("mtcp connection migrated", attrs...)
}

// Fence implements txn.Observer.
func (m *metrics) Fence(kind string, sessions int) {
	m.fenced.WithLabelValues(kind).Add(float64(sessions))
}

// probedDatabase records a probe's result.
func (m *metrics) probedDatabase(rtt time.Duration, err error) {
	if err != nil {
		m.dbUp.Set(0)
		return
	}
	m.dbUp.Set(1)
	m.dbRoundTrip.Set(rtt.Seconds())
}

// timeRequests observes each request's duration under its route pattern,
// which chi knows once routing is done; unrouted requests count as
// "unmatched", so the label stays bounded whatever paths clients send.
func (m *metrics) timeRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		route := "unmatched"
		if rc := chi.RouteContext(r.Context()); rc != nil {
			if p := rc.RoutePattern(); p != "" {
				route = p
			}
		}
		status := ww.Status()
		if status == 0 {
			status = http.StatusOK
		}
		m.httpSeconds.WithLabelValues(route, r.Method, strconv.Itoa(status)).Observe(time.Since(start).Seconds())
	})
}

// poolCollector reads pgxpool's statistics at scrape time.
type poolCollector struct {
	pool                                 *pgxpool.Pool
	conns, max                           *prometheus.Desc
	acquires, waits, waitSeconds, cancel *prometheus.Desc
}

func newPoolCollector(pool *pgxpool.Pool) *poolCollector {
	return &poolCollector{
		pool:        pool,
		conns:       prometheus.NewDesc("hafe_db_pool_connections", "Database connections of this front-end's pool, by state (in_use, idle, constructing).", []string{"state"}, nil),
		max:         prometheus.NewDesc("hafe_db_pool_max_connections", "The pool's size limit (--pool-size).", nil, nil),
		acquires:    prometheus.NewDesc("hafe_db_pool_acquires_total", "Connections taken from the pool.", nil, nil),
		waits:       prometheus.NewDesc("hafe_db_pool_acquire_waits_total", "Acquires that found no idle connection and waited (for a new one or a release).", nil, nil),
		waitSeconds: prometheus.NewDesc("hafe_db_pool_acquire_wait_seconds_total", "Time acquires spent waiting for a connection.", nil, nil),
		cancel:      prometheus.NewDesc("hafe_db_pool_acquires_canceled_total", "Acquires given up before a connection came (the request ended).", nil, nil),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.conns, c.max, c.acquires, c.waits, c.waitSeconds, c.cancel} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.pool.Stat()
	ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(s.AcquiredConns()), "in_use")
	ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(s.IdleConns()), "idle")
	ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(s.ConstructingConns()), "constructing")
	ch <- prometheus.MustNewConstMetric(c.max, prometheus.GaugeValue, float64(s.MaxConns()))
	ch <- prometheus.MustNewConstMetric(c.acquires, prometheus.CounterValue, float64(s.AcquireCount()))
	ch <- prometheus.MustNewConstMetric(c.waits, prometheus.CounterValue, float64(s.EmptyAcquireCount()))
	ch <- prometheus.MustNewConstMetric(c.waitSeconds, prometheus.CounterValue, s.EmptyAcquireWaitTime().Seconds())
	ch <- prometheus.MustNewConstMetric(c.cancel, prometheus.CounterValue, float64(s.CanceledAcquireCount()))
}

// memberView is the cluster's membership as the last heartbeat read it.
type memberView struct {
	mu      sync.Mutex
	members []backendext.Member
	readAt  time.Time
}

func (v *memberView) set(ms []backendext.Member) {
	v.mu.Lock()
	v.members, v.readAt = ms, time.Now()
	v.mu.Unlock()
}

// get returns the members with their heartbeat ages as of now.
func (v *memberView) get() []backendext.Member {
	v.mu.Lock()
	defer v.mu.Unlock()
	since := time.Since(v.readAt)
	out := make([]backendext.Member, len(v.members))
	for i, m := range v.members {
		m.HeartbeatAge += since
		out[i] = m
	}
	return out
}

// memberCollector exports each member's heartbeat age. Member ids are the
// cluster's front-ends: a handful, so the label stays bounded; a member
// that leaves drops out.
type memberCollector struct {
	view *memberView
	age  *prometheus.Desc
}

func newMemberCollector(v *memberView) *memberCollector {
	return &memberCollector{view: v, age: prometheus.NewDesc("hafe_member_heartbeat_age_seconds",
		"Age of each member's last heartbeat, as this front-end last read hafe.members.", []string{"member"}, nil)}
}

func (c *memberCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.age }

func (c *memberCollector) Collect(ch chan<- prometheus.Metric) {
	for _, m := range c.view.get() {
		ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, m.HeartbeatAge.Seconds(), m.ID)
	}
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
