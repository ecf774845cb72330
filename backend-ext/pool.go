package backendext

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
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
}

// IsDeadConn reports whether err says the connection itself is gone (the
// server closed or reset it, or terminated the session) rather than that a
// statement failed. A PostgreSQL restart leaves every pooled connection
// so, and each one fails like this the first time it is used.
func IsDeadConn(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "57P01", "57P02": // admin_shutdown, crash_shutdown
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
