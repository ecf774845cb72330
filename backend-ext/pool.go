package backendext

import (
	"net"
	"strconv"
	"time"

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
