package backendext

import (
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// ApplicationName is how a front-end's sessions name themselves; fencing
// only ever terminates sessions with this prefix.
func ApplicationName(memberID string) string { return "hafe/" + memberID }

// ConfigurePool sets what every front-end session needs: its application
// name, and idle_in_transaction_session_timeout so that a session left in an
// open transaction by a hung front-end cannot hold a batch's lock forever.
func ConfigurePool(cfg *pgxpool.Config, memberID string, idleInTx time.Duration) {
	rp := cfg.ConnConfig.RuntimeParams
	rp["application_name"] = ApplicationName(memberID)
	if idleInTx > 0 {
		rp["idle_in_transaction_session_timeout"] = strconv.FormatInt(idleInTx.Milliseconds(), 10)
	}
}
