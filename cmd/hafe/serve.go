package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/frontend"
	"hafe.dev/hafe/mtcp"
	hafesql "hafe.dev/hafe/sql"
	"hafe.dev/hafe/txn"
)

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("serve", "serve --db URL [--listen ADDR] [--id NAME] [--token NAME=SECRET] [flags]",
		`Runs one front-end: POST /v1/batches executes batches of transactions on
PostgreSQL, each exactly once. Several front-ends share one database.

Clients authenticate with --token bearer tokens. Without --token the batch
API is open: run like that on loopback only. Batches must be sent with
Content-Type: application/json (forms and text are refused), which keeps a
web page from posting one across sites; a token keeps out everyone else.`, stderr)
	var (
		db           = fs.String("db", "", "PostgreSQL URL (required), e.g. postgres://hafe:secret@db:5432/app; with a primary and standbys, list them all (postgres://hafe:secret@db1:5432,db2:5432/app): hafe only ever uses the one that takes writes, and finds the new primary after a failover")
		listen       = fs.String("listen", "127.0.0.1:8080", "HTTP listen address")
		advertise    = fs.String("advertise", "", "address other members and operators reach this front-end at (default: --listen)")
		id           = fs.String("id", "", "this front-end's name in the cluster (default: host name and port)")
		rawSQL       = fs.Bool("allow-raw-sql", false, `accept {"sql":[...]} transactions, not only templates; they run on sessions of --raw-sql-db, which logs in as the client role`)
		rawDB        = fs.String("raw-sql-db", "", "PostgreSQL URL that logs in as the client role, for raw SQL (required with --allow-raw-sql), e.g. postgres://hafe_client:secret@db:5432/app. The role may have no privilege on schema hafe but calling hafe.record_outcome, nor be a superuser or have BYPASSRLS, CREATEROLE or CREATEDB, nor be a member of a role that has; hafe serve checks at start")
		clientRole   = fs.String("client-role", "", "the role --raw-sql-db must log in as (default: the user named in --raw-sql-db)")
		rawPoolSize  = fs.Int("raw-sql-pool-size", 5, "most raw SQL transactions running at once; each has a database session of its own, apart from --pool-size, and closed after it")
		rawTimeout   = fs.Duration("raw-sql-timeout", txn.DefaultRawSQLTimeout, "longest a raw SQL transaction may run; it is then cancelled and recorded aborted (raw_sql_timeout)")
		templates    = fs.String("templates", "", "directory of NAME.sql transaction templates (default: the built-in demo bank templates)")
		install      = fs.Bool("install", false, "install or upgrade hafe's back-end objects at start (as hafe db install)")
		allowSuper   = fs.Bool("allow-superuser", false, "serve even if the --db role is a superuser or may run programs or touch files on the database server (pg_execute_server_program, pg_read/write_server_files); refused otherwise. Never excuses the client role")
		adminToken   = fs.String("admin-token", "", "bearer token for /admin routes (empty: admin routes disabled)")
		poolSize     = fs.Int("pool-size", 20, "maximum database connections for batches (the heartbeat, readiness and admin routes have 2 more of their own)")
		idleInTx     = fs.Duration("idle-in-transaction-timeout", 30*time.Second, "idle_in_transaction_session_timeout of this front-end's sessions")
		maxAttempts  = fs.Int("max-attempts", 5, "attempts per transaction on serialization failure or deadlock")
		fenceGrace   = fs.Duration("fence-grace", 5*time.Second, "wait for a previous owner's open transaction before terminating its session")
		liveness     = fs.Duration("owner-liveness", 10*time.Second, "a member whose heartbeat is older than this is considered gone")
		heartbeat    = fs.Duration("heartbeat", time.Second, "membership heartbeat interval")
		settle       = fs.Duration("settle-timeout", time.Minute, "how long a batch waits for a lost database before giving up")
		retention    = fs.Duration("retention", 7*24*time.Hour, "how long finished batches stay resumable")
		maxBody      = fs.Int64("max-body-bytes", 8<<20, "largest request body")
		maxTxns      = fs.Int("max-transactions", 10000, "most transactions per batch")
		maxStmts     = fs.Int("max-statements", 100, "most statements per raw SQL transaction")
		maxValues    = fs.Int("max-values", 200000, "most JSON values (statements, arguments, their elements) in a batch's transactions; 65535 at most in one")
		maxRows      = fs.Int("max-result-rows", 10000, "most rows per statement result; more aborts the transaction")
		maxReport    = fs.Int("max-report-bytes", 1<<20, "largest report line per transaction; larger aborts it")
		readHeader   = fs.Duration("read-header-timeout", 10*time.Second, "longest a client may take to send a request's headers; then its connection is closed")
		bodyTimeout  = fs.Duration("body-read-timeout", 30*time.Second, "longest a client may take to send a batch's body; then it is refused with 408 body_timeout and nothing runs")
		idleTimeout  = fs.Duration("idle-timeout", 2*time.Minute, "longest a keep-alive connection may wait for its next request")
		writeTimeout = fs.Duration("write-timeout", 30*time.Second, "longest a response write may wait for a client that does not read; then the client loses its connection and its batch is released for a retry (batches never wait for a client while holding a database connection)")
		drainTimeout = fs.Duration("drain-timeout", 30*time.Second, "on SIGTERM, how long running batches may take to finish")
		logLevel     = fs.String("log-level", "info", "debug, info, warn or error")
		logFormat    = fs.String("log-format", "text", "log lines as text (key=value) or json")
		mtcpListen   = fs.String("mtcp-listen", "", "also serve the API over Migratory TCP at this address: a client's connection, running batch included, moves to another front-end when this one dies, drains or is overloaded (needs --cluster-key-file)")
		mtcpAdvert   = fs.String("mtcp-advertise", "", "address clients and the other front-ends reach --mtcp-listen at (default: --mtcp-listen)")
		clusterKey   = fs.String("cluster-key-file", "", "file holding the key the front-ends share to authenticate each other when they hand connections over (at least 16 bytes; the same file on every front-end)")
		maxBatches   = fs.Int("max-batches", 0, "with --mtcp-listen: running more batches than this, move MTCP connections with running batches to lighter front-ends, where they go on (0: no limit)")
		rebalance    = fs.Float64("rebalance-threshold", 0, "with --mtcp-listen: running more batches than the other front-ends' average by more than this, move MTCP connections with running batches to lighter ones (0: off)")
		requireSync  = fs.Bool("require-sync-replication", false, requireSyncHelp)
		mtcpMode     = fs.String("mtcp-mode", "eager", "eager: save each connection's state in the database, so it survives a crash of this front-end; lazy: keep it here and hand it over on request only (survives drains and path failures, not crashes)")
	)
	tf := addTLSFlags(fs)
	var tokens tokenList
	fs.Var(&tokens, "token", "client bearer token accepted on /v1, as NAME=SECRET (repeatable or comma-separated). Idempotency-Keys are scoped by NAME, so give a client's new secret the same NAME when rotating it. Without any, the API is open to anyone who can reach --listen, including web pages in a browser on this machine: for loopback only")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *db == "" {
		fs.Usage()
		return errors.New("--db is required")
	}
	if *rawSQL && *rawDB == "" {
		return errors.New("--allow-raw-sql needs --raw-sql-db, a URL that logs in as the client role (e.g. postgres://hafe_client:secret@db/app): raw SQL run on the front-end's own sessions could take the front-end's role back (set_config('role', …) through query_to_xml and the like), so it only runs on sessions whose login role is the client role. Run hafe db install --client-role hafe_client, then ALTER ROLE hafe_client LOGIN PASSWORD '…'")
	}
	log, err := newLogger(stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}
	mopts, err := readMTCPOptions(*mtcpListen, *mtcpAdvert, *clusterKey, *mtcpMode)
	if err != nil {
		return usageError{cmd: "serve", err: err}
	}
	stls, err := tf.load(mopts != nil)
	if err != nil {
		return usageError{cmd: "serve", err: err}
	}
	if *maxBatches < 0 || *rebalance < 0 {
		return usageError{cmd: "serve", err: errors.New("--max-batches and --rebalance-threshold must not be negative")}
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	ln = stls.listenHTTPS(ln)
	defer stls.reloadOnSIGHUP(log)()
	addr := *advertise
	if addr == "" {
		addr = ln.Addr().String()
	}
	if *id == "" {
		host, _ := os.Hostname()
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		*id = host + ":" + port
	}
	catalog := hafesql.Builtin()
	if *templates != "" {
		if catalog, err = hafesql.LoadDir(*templates); err != nil {
			ln.Close()
			return err
		}
	}

	poolCfg, err := pgxpool.ParseConfig(*db)
	if err != nil {
		ln.Close()
		return fmt.Errorf("--db: %w", err)
	}
	poolCfg.MaxConns = int32(*poolSize)
	// Each run is an incarnation of the front-end: its batches and its
	// database sessions carry it, so that a later run of the same --id does
	// not pass for this one.
	incarnation := rand.Text()
	backendext.ConfigurePool(poolCfg, *id, incarnation, *idleInTx)
	sessions := backendext.NewSessions() // cut after a failover (the copies below too)
	sessions.Track(poolCfg)
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		ln.Close()
		return fmt.Errorf("database: %w", err)
	}
	defer pool.Close()
	// Heartbeats, readiness, gc and the admin routes get connections of
	// their own: batches that fill the main pool must not make this
	// front-end look dead to its peers or unready to its load balancer.
	ctlCfg := poolCfg.Copy()
	ctlCfg.MaxConns = 2
	ctl, err := pgxpool.NewWithConfig(ctx, ctlCfg)
	if err != nil {
		ln.Close()
		return fmt.Errorf("database: %w", err)
	}
	defer ctl.Close()
	var rawCfg *pgxpool.Config
	role := backendext.DefaultClientRole
	if *rawSQL {
		if rawCfg, err = pgxpool.ParseConfig(*rawDB); err != nil {
			ln.Close()
			return fmt.Errorf("--raw-sql-db: %w", err)
		}
		role = rawCfg.ConnConfig.User
		if *clientRole != "" && *clientRole != role {
			ln.Close()
			return fmt.Errorf("--raw-sql-db logs in as %q, but --client-role is %q", role, *clientRole)
		}
	}
	if *install {
		if err := installWithPool(ctx, pool, role, log); err != nil {
			ln.Close()
			return err
		}
	}

	if err := checkStartup(ctx, ctl, *id, *liveness, log); err != nil {
		ln.Close()
		// Exit status 1: a refusal, which restarting as is will not cure.
		return exitError{code: 1, err: err}
	}

	roles, err := backendext.ReadRoles(ctx, pool, role)
	if err != nil {
		ln.Close()
		return err
	}
	if problems := roles.Problems(*allowSuper, *rawSQL); len(problems) > 0 {
		ln.Close()
		return fmt.Errorf("refusing to serve:\n  %s", strings.Join(problems, "\n  "))
	}
	var raw txn.RawSQLConfig
	if *rawSQL {
		rawCfg.MaxConns = int32(*rawPoolSize)
		backendext.ConfigureRawPool(rawCfg, *id, incarnation, *idleInTx, *rawTimeout)
		sessions.Track(rawCfg)
		if raw, err = openRawSQL(ctx, pool, rawCfg, role); err != nil {
			ln.Close()
			return err
		}
		defer raw.Pool.Close()
		raw.Timeout = *rawTimeout
	}

	var (
		mln *mtcp.Listener
		// The listener reports migrations to the front-end made after it.
		observer atomic.Pointer[frontend.Server]
	)
	if mopts != nil {
		var closeStore func()
		// A request's input is kept until the request is answered.
		mopts.maxInputLog = int(*maxBody) + 1<<20
		mopts.tls = stls
		if mln, closeStore, err = listenMTCP(ctx, mopts, poolCfg, *id, log, func(s mtcp.MigrationStats) {
			if fe := observer.Load(); fe != nil {
				fe.ObserveMigration(s)
			}
		}); err != nil {
			ln.Close()
			return err
		}
		defer closeStore()
		defer mln.Close()
	}
	fe, err := frontend.New(pool, frontend.Config{
		ID: *id, Addr: addr, MTCPAddr: mopts.advertised(mln), MaxBatches: *maxBatches, RebalanceThreshold: *rebalance, AllowRawSQL: *rawSQL, ClientTokens: tokens, AdminToken: *adminToken,
		Templates: catalog,
		Limits:    frontend.Limits{MaxBodyBytes: *maxBody, MaxTransactions: *maxTxns, MaxStatements: *maxStmts, MaxBatchValues: *maxValues},
		Executor: txn.Config{
			Incarnation: incarnation, RawSQL: raw,
			MaxAttempts: *maxAttempts, FenceGrace: *fenceGrace, OwnerLiveness: *liveness, SettleTimeout: *settle,
			Limits: txn.Limits{MaxRows: *maxRows, MaxReportBytes: *maxReport},
		},
		ControlPool: ctl, WriteTimeout: *writeTimeout,
		ReadHeaderTimeout: *readHeader, BodyReadTimeout: *bodyTimeout, IdleTimeout: *idleTimeout,
		HeartbeatInterval: *heartbeat, Retention: *retention, RequireSyncReplication: *requireSync, Sessions: sessions,
	}, log)
	if err != nil {
		ln.Close()
		return err
	}
	observer.Store(fe)
	if err := checkReplication(ctx, fe, *requireSync); err != nil {
		ln.Close()
		return err
	}

	// Batches run on their own context: a SIGTERM first lets them finish.
	batchCtx, cancelBatches := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancelBatches(nil)
	srv := &http.Server{BaseContext: func(net.Listener) context.Context { return batchCtx }}
	fe.ConfigureHTTP(srv)
	memberCtx, stopMember := context.WithCancel(context.WithoutCancel(ctx))
	memberDone := make(chan struct{})
	go func() { fe.Run(memberCtx); close(memberDone) }()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	mtcpDone := make(chan struct{})
	if mln != nil {
		go func() { fe.ServeMTCP(mln); close(mtcpDone) }()
	} else {
		close(mtcpDone)
	}
	log.Info("front-end serving", "id", *id, "listen", ln.Addr().String(), "mtcp", mopts.advertised(mln), "mtcp_mode", mopts.mode(), "tls", stls != nil, "raw_sql", *rawSQL, "templates", len(catalog.Names()))

	var drained <-chan struct{}
	select {
	case err := <-served:
		stopMember()
		<-memberDone
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
		// Drain also moves MTCP connections, running batches included,
		// to the other front-ends; their batches here stop at their next
		// write.
		log.Info("shutting down: draining running batches", "timeout", *drainTimeout)
		drained = fe.Drain()
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), *drainTimeout)
	defer cancel()

	select {
	case <-drained:
	case <-shutdownCtx.Done():
		log.Warn("drain timeout: interrupting running batches; clients resume them elsewhere")
		cancelBatches(frontend.ErrShuttingDown)
		// Let the handlers tell their clients before connections close.
		select {
		case <-drained:
		case <-time.After(2 * time.Second):
		}
	}
	srv.Shutdown(shutdownCtx)
	srv.Close()
	if mln != nil {
		mln.Close()
	}
	<-mtcpDone
	stopMember()
	<-memberDone
	log.Info("front-end stopped", "id", *id)
	return nil
}

// checkStartup refuses to serve, with one message saying what to do, on a
// database without hafe (or with an older hafe) and when a front-end with
// the same --id is alive. A previous run that crashed leaves a fresh
// heartbeat behind: that is waited out (at most --owner-liveness), not
// refused, so a supervisor's restart works.
func checkStartup(ctx context.Context, db backendext.DB, id string, liveness time.Duration, log *slog.Logger) error {
	if err := backendext.CheckInstalled(ctx, db); err != nil {
		if errors.Is(err, backendext.ErrNotInstalled) {
			return fmt.Errorf("%w: run hafe db install --db URL (or start hafe serve with --install)", err)
		}
		return fmt.Errorf("database: %w", err)
	}
	err := backendext.CheckMemberIDFree(ctx, db, id, liveness, 200*time.Millisecond, func(age time.Duration) {
		log.Info("a member with this id heartbeated recently: waiting to see whether it is still alive",
			"id", id, "heartbeat_age", age.Round(time.Millisecond), "owner_liveness", liveness)
	})
	var alive *backendext.MemberAliveError
	if errors.As(err, &alive) {
		return fmt.Errorf("refusing to serve: %w; stop it, or give this front-end another --id", err)
	}
	return err
}

// tokenList is the repeatable (or comma-separated) --token NAME=SECRET.
type tokenList []frontend.Token

var tokenName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

func (l *tokenList) String() string {
	names := make([]string, len(*l))
	for i, t := range *l {
		names[i] = t.Name + "=…"
	}
	return strings.Join(names, ",")
}

func (l *tokenList) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		name, secret, ok := strings.Cut(p, "=")
		if !ok || !tokenName.MatchString(name) || secret == "" {
			return errors.New("want NAME=SECRET, NAME of letters, digits, '.', '_' or '-' (Idempotency-Keys are scoped by NAME, so a client keeps its keys when its secret is rotated)")
		}
		for _, t := range *l {
			if t.Secret == secret && t.Name != name {
				return fmt.Errorf("one secret for two names (%s and %s)", t.Name, name)
			}
		}
		*l = append(*l, frontend.Token{Name: name, Secret: secret})
	}
	return nil
}

// openRawSQL opens the raw SQL pool and checks that it logs in as role, to
// the front-end's database, and reads the key raw SQL outcomes are signed
// with (with the front-end's own role: the client role cannot read it).
func openRawSQL(ctx context.Context, pool *pgxpool.Pool, cfg *pgxpool.Config, role string) (txn.RawSQLConfig, error) {
	raw, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return txn.RawSQLConfig{}, fmt.Errorf("--raw-sql-db: %w", err)
	}
	var user, rawDB, db string
	err = raw.QueryRow(ctx, "SELECT session_user::text, current_database()::text").Scan(&user, &rawDB)
	if err == nil {
		err = pool.QueryRow(ctx, "SELECT current_database()::text").Scan(&db)
	}
	switch {
	case err != nil:
		raw.Close()
		return txn.RawSQLConfig{}, fmt.Errorf("--raw-sql-db: cannot log in as the client role %q: %w (it needs LOGIN and a password: ALTER ROLE %s LOGIN PASSWORD '…')", role, err, pgx.Identifier{role}.Sanitize())
	case user != role:
		raw.Close()
		return txn.RawSQLConfig{}, fmt.Errorf("--raw-sql-db logs in as %q, want the client role %q", user, role)
	case rawDB != db:
		raw.Close()
		return txn.RawSQLConfig{}, fmt.Errorf("--raw-sql-db connects to database %q, but --db to %q", rawDB, db)
	}
	key, err := backendext.ReadOutcomeKey(ctx, pool)
	if err != nil {
		raw.Close()
		return txn.RawSQLConfig{}, err
	}
	return txn.RawSQLConfig{Pool: raw, OutcomeKey: key}, nil
}
