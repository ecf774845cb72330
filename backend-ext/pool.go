package backendext

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"
)

// deadPeerTimeout is how long data sent to the database may stay
// unacknowledged before the connection counts as dead.
const deadPeerTimeout = 15 * time.Second

// ApplicationName is how the sessions of one run (incarnation) of a
// front-end name themselves: "hafe/<id>/<incarnation prefix>", cut to the 63
// bytes PostgreSQL keeps. Fencing only ever terminates sessions whose name
// starts with "hafe/", and takes over a dead run's batches by terminating
// that run's sessions by this name.
func ApplicationName(memberID, incarnation string) string {
	name := "hafe/" + memberID
	if incarnation != "" {
		name += "/" + incarnation[:min(8, len(incarnation))]
	}
	return name[:min(63, len(name))]
}

// ConfigurePool sets what every front-end session needs: its application
// name, and idle_in_transaction_session_timeout so that a session left in an
// open transaction by a hung front-end cannot hold a batch's lock forever.
func ConfigurePool(cfg *pgxpool.Config, memberID, incarnation string, idleInTx time.Duration) {
	rp := cfg.ConnConfig.RuntimeParams
	rp["application_name"] = ApplicationName(memberID, incarnation)
	if idleInTx > 0 {
		rp["idle_in_transaction_session_timeout"] = strconv.FormatInt(idleInTx.Milliseconds(), 10)
	}
	// A front-end cut off from the database must notice within seconds,
	// not after the kernel's retransmission backoff (minutes): only then
	// does it stop, settle by lookup, and learn that it was fenced.
	d := &net.Dialer{
		Timeout:         10 * time.Second,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 10 * time.Second, Interval: 5 * time.Second, Count: 3},
		Control:         setUserTimeout(deadPeerTimeout),
	}
	cfg.ConnConfig.DialFunc = d.DialContext
	if len(cfg.ConnConfig.Fallbacks) > 0 {
		// Several hosts: each connection resolves them all first, in
		// turn. A dead one must not cost every attempt a resolver's
		// timeout (10s where a container's name goes to an unreachable
		// upstream server once the container is gone).
		cfg.ConnConfig.LookupFunc = quickLookup(cfg.ConnConfig.LookupFunc)
		// Nor a dead one's address (a killed server's, still in DNS for
		// a moment, takes packets and answers none) the whole timeout.
		d.Timeout = multiHostDialTimeout
		cfg.ConnConfig.DialFunc = quickDial(d.DialContext)
	}
	RequireWritable(&cfg.ConnConfig.Config)
}

// Host lookups of a multi-host URL: each bounded, and a host that failed
// fails again at once for a while.
const (
	lookupTimeout   = 2 * time.Second
	lookupFailedFor = 5 * time.Second
)

func quickLookup(lookup pgconn.LookupFunc) pgconn.LookupFunc {
	if lookup == nil {
		lookup = net.DefaultResolver.LookupHost
	}
	failed := &recentFailures{}
	return func(ctx context.Context, host string) ([]string, error) {
		if err := failed.get(host); err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
		defer cancel()
		addrs, err := lookup(ctx, host)
		failed.note(host, err)
		return addrs, err
	}
}

// multiHostDialTimeout bounds a connection attempt to one host of several.
const multiHostDialTimeout = 3 * time.Second

// quickDial makes an address whose dial failed fail again at once for
// lookupFailedFor: a connection tries the hosts in turn, and the primary
// may be the last.
func quickDial(dial pgconn.DialFunc) pgconn.DialFunc {
	failed := &recentFailures{}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if err := failed.get(addr); err != nil {
			return nil, err
		}
		c, err := dial(ctx, network, addr)
		if err == nil || ctx.Err() == nil { // not the caller giving up
			failed.note(addr, err)
		}
		return c, err
	}
}

// recentFailures remembers, per host or address, a failure of the last
// lookupFailedFor.
type recentFailures struct {
	mu     sync.Mutex
	failed map[string]failedLookup
}

type failedLookup struct {
	at  time.Time
	err error
}

// get returns key's recent failure, or nil.
func (r *recentFailures) get(key string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if f, ok := r.failed[key]; ok && time.Since(f.at) < lookupFailedFor {
		return f.err
	}
	return nil
}

// note records key's failure, or forgets it on success (err nil).
func (r *recentFailures) note(key string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		delete(r.failed, key)
		return
	}
	if r.failed == nil {
		r.failed = map[string]failedLookup{}
	}
	r.failed[key] = failedLookup{at: time.Now(), err: err}
}

// RequireWritable makes connections with cfg go only to a server that
// accepts writes, and drop a session as soon as it finds its server read-only
// (SQLSTATE 25006: a demoted primary, a standby): a front-end never writes
// to a standby, and a session on one is never reused. With a multi-host URL
// (postgres://a,b/db) a connection then tries the hosts in turn until one
// is the primary, whatever target_session_attrs says; a target_session_attrs
// the URL sets is checked too.
func RequireWritable(cfg *pgconn.Config) {
	prev := cfg.ValidateConnect
	cfg.ValidateConnect = func(ctx context.Context, c *pgconn.PgConn) error {
		if prev != nil {
			if err := prev(ctx, c); err != nil {
				return err
			}
		}
		// One round trip: writable? and which server (for ServerOf).
		res, err := c.Exec(ctx, serverCheckSQL).ReadAll()
		if err != nil {
			return err
		}
		if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 2 {
			return errors.New("check server: unexpected answer")
		}
		if string(res[0].Rows[0][0]) == "on" {
			return pgconn.ErrReadOnlyConnection
		}
		c.CustomData()[serverKey] = string(res[0].Rows[0][1])
		return nil
	}
	onErr := cfg.OnPgError
	cfg.OnPgError = func(c *pgconn.PgConn, e *pgconn.PgError) bool {
		if e.Code == ReadOnlyCode {
			return false
		}
		return onErr == nil || onErr(c, e)
	}
}

// serverCheckSQL answers whether the session is read-only, and names the
// server run by when its postmaster started (to the microsecond; the
// address would differ between URLs that name one server differently). A
// promoted standby, or the same server restarted, is another run; a
// session on another run may find outcomes missing that were reported
// (ServerOf).
const serverCheckSQL = `SELECT current_setting('transaction_read_only'), pg_postmaster_start_time()::text`

const serverKey = "hafe.server"

// ServerOf names the server run a connection made with RequireWritable's
// config reached ("" for another connection). Two connections with the
// same name write to the same database; after a failover the name changes.
func ServerOf(c *pgconn.PgConn) string {
	s, _ := c.CustomData()[serverKey].(string)
	return s
}

// NoPrimaryNow reports whether a failed connection attempt or session says
// that the database servers answer but none takes writes: a standby
// answered read-only, or a server is shutting down, starting up or lost
// its postmaster. That is a failover under way, which every front-end
// sees alike, rather than this front-end being cut off (where nothing
// answers).
func NoPrimaryNow(err error) bool {
	if errors.Is(err, pgconn.ErrReadOnlyConnection) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "57P01", "57P02", "57P03":
			return true
		}
	}
	return false
}

// ReadOnlyCode is SQLSTATE read_only_sql_transaction: a write on a session
// whose server is (now) read-only, or in a transaction that is.
const ReadOnlyCode = "25006"

// IsReadOnly reports whether err is SQLSTATE 25006 (read_only_sql_transaction).
func IsReadOnly(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == ReadOnlyCode
}

// IsDeadConn reports whether err says the connection itself is gone (the
// server closed or reset it, or terminated the session) rather than that a
// statement failed. A PostgreSQL restart leaves every pooled connection
// so, and each one fails like this the first time it is used. A session
// that found its server read-only (25006, closed by RequireWritable) counts
// too: after a failover every pooled session is on the old primary.
func IsDeadConn(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "57P01", "57P02", ReadOnlyCode: // admin_shutdown, crash_shutdown, read-only server
			return true
		}
		return false
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		strings.Contains(err.Error(), "conn closed")
}

// WithLiveConn runs op on pool. If op fails because its connection was
// dead (IsDeadConn), the pool's connections are all replaced (after a
// restart they are all dead) and op runs once more: a restart costs its
// callers a reconnection, not an error. op must be safe to run again after
// a dead connection: a read, or a write whose second run finds the first.
func WithLiveConn(ctx context.Context, pool *pgxpool.Pool, op func(DB) error) error {
	err := op(pool)
	if err == nil || !IsDeadConn(err) || ctx.Err() != nil {
		return err
	}
	pool.Reset()
	return op(pool)
}

// ConfigureRawPool sets up a pool of sessions that log in as the client
// role to run clients' raw SQL: named and fenced like the front-end's own
// sessions (ConfigurePool), and built so that a slow statement ends when
// its context does. timeout is the longest a raw SQL transaction may run;
// the front-end enforces it by cancelling (a client may change
// statement_timeout), and the session defaults below only back it up.
func ConfigureRawPool(cfg *pgxpool.Config, memberID, incarnation string, idleInTx, timeout time.Duration) {
	ConfigurePool(cfg, memberID, incarnation, idleInTx)
	rp := cfg.ConnConfig.RuntimeParams
	if timeout > 0 {
		rp["statement_timeout"] = strconv.FormatInt((timeout + time.Second).Milliseconds(), 10)
	}
	// A backend whose front-end hung up stops its query within a second
	// instead of running it to the end unseen.
	rp["client_connection_check_interval"] = "1000"
	// On a cancelled context, ask the server to cancel the statement (so
	// the backend stops and releases its locks now), and give up on the
	// connection if that does not end it soon.
	cfg.ConnConfig.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: 2 * time.Second}
	}
}
