package frontend

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"hafe.dev/hafe/api"
	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/mtcp"
	hafesql "hafe.dev/hafe/sql"
	"hafe.dev/hafe/txn"
	"hafe.dev/hafe/web"
)

// Config configures a front-end. Zero fields take the documented defaults.
type Config struct {
	// ID names this front-end in the cluster (members, batch owners).
	ID string
	// Addr is the HTTP address other members and operators see for it.
	Addr string
	// MTCPAddr is the address clients and peers reach its MTCP listener
	// at (ServeMTCP), published in the members table; every front-end
	// gives its MTCP clients the list of its live peers' addresses.
	MTCPAddr string
	// MaxBatches and RebalanceThreshold make an overloaded front-end move
	// MTCP connections with running batches to lighter ones (their
	// batches go on there): when it runs more than MaxBatches (0: no
	// limit), or more than its live peers' average by more than
	// RebalanceThreshold (0: off). Checked after every heartbeat.
	MaxBatches         int
	RebalanceThreshold float64
	// AllowRawSQL accepts {"sql":[…]} transactions besides templates. It
	// needs Executor.RawSQL: a pool that logs in as the client role, and
	// the outcome key.
	AllowRawSQL bool
	// ClientTokens are the bearer tokens accepted on /v1; none means the
	// batch API is open (fine on loopback, not elsewhere). Idempotency-Keys
	// are scoped by a token's name, so a client keeps its keys when its
	// secret is rotated (several tokens may share a name).
	ClientTokens []Token
	// AdminToken guards /admin; empty disables the admin routes.
	AdminToken string
	// Templates is the catalog of named transactions (default: built-in).
	Templates *hafesql.Catalog
	// Limits bound requests.
	Limits Limits
	// Executor tunes batch execution; its Owner is set to ID.
	Executor txn.Config
	// HeartbeatInterval is how often membership is refreshed (default 1s).
	HeartbeatInterval time.Duration
	// ControlPool serves what must answer while batches are busy: the
	// heartbeat, readiness, gc and the admin routes. Give it a few
	// connections of its own (hafe serve does): by default it is the batch
	// pool, which as many slow batches as it has connections can exhaust,
	// and a front-end whose heartbeat stops is declared dead by its peers.
	ControlPool *pgxpool.Pool
	// WriteTimeout bounds each write of a response (default 30s): a client
	// that stops reading loses its connection after it, and its batch is
	// released for a retry anywhere. Batches never wait for a client while
	// they hold a database connection or a transaction.
	WriteTimeout time.Duration
	// ReadHeaderTimeout bounds reading a request's headers (default 10s),
	// BodyReadTimeout reading a batch's body (default 30s; 408 after it),
	// IdleTimeout how long a keep-alive connection may wait for its next
	// request (default 2m). ConfigureHTTP applies the first and the last.
	ReadHeaderTimeout time.Duration
	BodyReadTimeout   time.Duration
	IdleTimeout       time.Duration
	// Retention is how long finished batches stay resumable (default 7 days);
	// GCInterval is how often old rows are removed (default 10 minutes).
	Retention  time.Duration
	GCInterval time.Duration
	// RequireSyncReplication makes readyz fail unless a synchronous
	// standby has every commit this front-end reports (see
	// replication.go).
	RequireSyncReplication bool
	// Sessions, when set, tracks the sessions of the front-end's pools:
	// those left on an old server run after a failover are cut as soon
	// as the heartbeat reaches the new one.
	Sessions *backendext.Sessions
}

func (c Config) withDefaults() Config {
	if c.Templates == nil {
		c.Templates = hafesql.Builtin()
	}
	c.Limits = c.Limits.withDefaults()
	c.Executor.Owner = c.ID
	if c.Executor.OwnerLiveness <= 0 {
		// The admin routes judge liveness with it too: the executor's
		// default, or every member would show as gone.
		c.Executor.OwnerLiveness = 10 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 30 * time.Second
	}
	if c.ReadHeaderTimeout <= 0 {
		c.ReadHeaderTimeout = 10 * time.Second
	}
	if c.BodyReadTimeout <= 0 {
		c.BodyReadTimeout = 30 * time.Second
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 2 * time.Minute
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = time.Second
	}
	if c.Retention <= 0 {
		c.Retention = 7 * 24 * time.Hour
	}
	if c.GCInterval <= 0 {
		c.GCInterval = 10 * time.Minute
	}
	return c
}

// Server is one front-end: the HTTP API over a txn executor, plus its
// membership in the cluster.
type Server struct {
	cfg     Config
	pool    *pgxpool.Pool // batches
	ctl     *pgxpool.Pool // heartbeat, readiness, gc, admin: never starved by batches
	exec    *txn.Executor
	log     *slog.Logger
	rootLog *slog.Logger // without component, for request loggers
	metrics *metrics
	router  chi.Router

	batches inflight
	numbers numberArgs
	mtcp    atomic.Pointer[mtcp.Listener] // set by ServeMTCP
	busy    busyConns                     // MTCP connections streaming a batch
	orphans orphanWatches                 // runs that lost a batch to a migration
	// probeFailures counts failed database probes in a row (heartbeat
	// goroutine only).
	probeFailures int
	// migrations this front-end took, for Run to record in the database
	// (dropped when it falls behind).
	migrations  chan backendext.Migration
	drainOnce   sync.Once
	drained     chan struct{} // see Drain
	mtcpMu      sync.Mutex
	mtcpServers []string // the list last given to the listener
	members     memberView
	replication replicationWatch
	server      string // the server run the heartbeat last reached
	lost        lostReports
}

// New returns a front-end serving batches on pool. The pool's sessions
// should be configured with backendext.ConfigurePool(cfg, ID,
// Executor.Incarnation, …).
func New(pool *pgxpool.Pool, cfg Config, log *slog.Logger) (*Server, error) {
	if cfg.ID == "" {
		return nil, errors.New("frontend: Config.ID is required")
	}
	for _, t := range cfg.ClientTokens {
		if t.Name == "" || t.Secret == "" {
			return nil, errors.New("frontend: every client token needs a name and a secret")
		}
	}
	if cfg.AllowRawSQL && (cfg.Executor.RawSQL.Pool == nil || len(cfg.Executor.RawSQL.OutcomeKey) == 0) {
		return nil, errors.New("frontend: AllowRawSQL needs Executor.RawSQL.Pool (sessions that log in as the client role) and Executor.RawSQL.OutcomeKey")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	ctl := cfg.ControlPool
	if ctl == nil {
		ctl = pool
	}
	s := &Server{cfg: cfg, pool: pool, ctl: ctl, migrations: make(chan backendext.Migration, 256), rootLog: log, log: log.With("component", "frontend"), metrics: newMetrics(), numbers: numberArgs{pool: pool}}
	cfg.Executor.Observer = s.metrics
	s.exec = txn.NewExecutor(pool, cfg.Executor, log.With("component", "txn"))
	s.metrics.registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "hafe_batches_in_flight", Help: "Batches this front-end is executing now.",
	}, func() float64 { return float64(s.batches.running()) }), prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "hafe_mtcp_connections", Help: "MTCP connections this front-end serves now (0 without --mtcp-listen).",
	}, func() float64 { return float64(s.mtcpConns()) }), newPoolCollector(pool), newMemberCollector(&s.members))
	s.router = s.routes()
	return s, nil
}

// Handler is the front-end's HTTP handler.
func (s *Server) Handler() http.Handler { return s.router }

// ConfigureHTTP sets srv's handler and the connection timeouts that keep
// slow or idle clients from holding connections: Config.ReadHeaderTimeout
// and Config.IdleTimeout. Body reads and response writes get deadlines
// per request (Config.BodyReadTimeout, Config.WriteTimeout); srv's own
// ReadTimeout and WriteTimeout stay unset, as they would cut off a long
// batch's response stream.
func (s *Server) ConfigureHTTP(srv *http.Server) {
	srv.Handler = s.router
	srv.ReadHeaderTimeout = s.cfg.ReadHeaderTimeout
	srv.IdleTimeout = s.cfg.IdleTimeout
}

func (s *Server) routes() chi.Router {
	r := chi.NewRouter()
	r.Use(s.metrics.timeRequests, s.withRequestID, middleware.Recoverer)
	r.Get("/healthz", s.healthz)
	r.Get("/readyz", s.readyz)
	r.Handle("/metrics", promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{}))
	r.Handle("/dashboard/*", http.StripPrefix("/dashboard", web.Handler()))
	r.Get("/dashboard", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/dashboard/", http.StatusMovedPermanently)
	})
	r.Route("/v1", func(r chi.Router) {
		r.Get("/openapi.json", s.openAPI)
		r.Group(func(r chi.Router) {
			r.Use(s.requireToken(s.cfg.ClientTokens, false))
			r.Post("/batches", s.postBatch)
			r.Get("/templates", s.listTemplates)
		})
	})
	r.Route("/admin", func(r chi.Router) {
		var tokens []Token
		if s.cfg.AdminToken != "" {
			tokens = []Token{{Name: "admin", Secret: s.cfg.AdminToken}}
		}
		r.Use(s.requireToken(tokens, true))
		r.Get("/members", s.listMembers)
		r.Get("/batches", s.listBatches)
		r.Get("/batches/{id}", s.getBatch)
		r.Get("/overview", s.overview)
		r.Post("/drain", s.drain)
		r.Post("/gc", s.runGC)
		r.Get("/lost-reports", s.listLostReports)
	})
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, refuse(404, "not_found", "no route %s %s", r.Method, r.URL.Path))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, refuse(405, "method_not_allowed", "%s is not allowed on %s", r.Method, r.URL.Path))
	})
	return r
}

// Token is a client's bearer token: Secret is what it sends, Name who it
// is.
type Token struct {
	Name   string
	Secret string
}

type clientKey struct{}

// requireToken checks the bearer token. The matched token's name scopes
// idempotency keys, so two clients cannot collide on a key and a rotated
// secret keeps them. With no tokens configured, the routes are open unless
// closedWhenEmpty.
func (s *Server) requireToken(tokens []Token, closedWhenEmpty bool) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if len(tokens) == 0 {
				if closedWhenEmpty {
					writeError(w, refuse(404, "admin_disabled", "the admin routes are disabled on this front-end (start it with --admin-token)"))
					return
				}
				next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), clientKey{}, "open")))
				return
			}
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok {
				w.Header().Set("WWW-Authenticate", `Bearer realm="hafe"`)
				writeError(w, refuse(401, "unauthorized", "send the header: Authorization: Bearer <token>"))
				return
			}
			// Every token is compared, so the time taken says nothing
			// about which one matched.
			var name string
			for _, t := range tokens {
				if subtle.ConstantTimeCompare([]byte(got), []byte(t.Secret)) == 1 {
					name = t.Name
				}
			}
			if name != "" {
				ctx := context.WithValue(r.Context(), clientKey{}, "token:"+name)
				next.ServeHTTP(w, r.WithContext(ctx))
				return
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="hafe", error="invalid_token"`)
			writeError(w, refuse(401, "unauthorized", "the bearer token is not valid here"))
		})
	}
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, 200, map[string]any{"status": "ok", "id": s.cfg.ID})
}

// readyz fails while draining or when the database does not answer, so a
// load balancer sends new batches elsewhere.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.batches.isDraining() {
		writeJSON(w, 503, map[string]any{"status": "draining", "id": s.cfg.ID})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.ctl.Ping(ctx); err != nil {
		writeJSON(w, 503, map[string]any{"status": "database unreachable", "id": s.cfg.ID, "error": err.Error()})
		return
	}
	repl, ok := s.replicationDetail()
	if !ok {
		writeJSON(w, 503, map[string]any{"status": "replication not synchronous", "id": s.cfg.ID, "replication": repl})
		return
	}
	writeJSON(w, 200, map[string]any{"status": "ready", "id": s.cfg.ID, "replication": repl})
}

func (s *Server) listTemplates(w http.ResponseWriter, r *http.Request) {
	type tmpl struct {
		Name string   `json:"name"`
		Doc  string   `json:"doc"`
		Args []string `json:"args"`
	}
	var out []tmpl
	for _, n := range s.cfg.Templates.Names() {
		t, _ := s.cfg.Templates.Get(n)
		out = append(out, tmpl{t.Name, t.Doc, t.Args})
	}
	writeJSON(w, 200, map[string]any{"templates": out, "raw_sql": s.cfg.AllowRawSQL})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

// writeError sends a refusal as {"error":{"code":…,"message":…}}.
func writeError(w http.ResponseWriter, e *requestError) {
	writeJSON(w, e.status, api.Refusal{Error: api.RefusalError{Code: e.code, Message: e.message}})
}
