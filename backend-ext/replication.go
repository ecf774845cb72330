package backendext

import (
	"context"
	"fmt"
)

// Replication is what the database a front-end writes to says about its
// standbys, as it applies to the front-end's own commits.
type Replication struct {
	// StandbyNames and Commit are synchronous_standby_names and
	// synchronous_commit as the front-end's session sees them.
	StandbyNames, Commit string
	// Standbys counts the standbys streaming from this server;
	// SyncStandbys those in sync_state sync or quorum. SyncVisible is
	// false when the role may not see sync_state (it needs pg_monitor or
	// pg_read_all_stats), so SyncStandbys is unknown.
	Standbys, SyncStandbys int
	SyncVisible            bool
}

// The promises a front-end's reports carry across a failover.
const (
	// PromiseSync: every reported commit is on a synchronous standby too,
	// so it survives the promotion of that standby.
	PromiseSync = "sync"
	// PromiseSyncNoStandby: commits are to wait for a synchronous standby
	// and none is attached: nothing reported can be lost, but commits
	// wait until one attaches.
	PromiseSyncNoStandby = "sync_no_standby"
	// PromiseAsync: a reported commit may be lost if a standby is
	// promoted (asynchronous replication, or none).
	PromiseAsync = "async"
	// PromiseUnknown: the settings could not be read.
	PromiseUnknown = "unknown"
)

// syncCommit reports whether commits wait for the synchronous standbys.
// remote_write waits until a standby has the commit in memory: it survives
// the primary's loss, though not the standby's at the same time.
func (r Replication) syncCommit() bool {
	switch r.Commit {
	case "on", "remote_apply", "remote_write":
		return r.StandbyNames != ""
	}
	return false
}

// Promise names what holds for a commit this front-end reports.
func (r Replication) Promise() string {
	switch {
	case !r.syncCommit():
		return PromiseAsync
	case !r.SyncVisible:
		return PromiseUnknown
	case r.SyncStandbys == 0:
		return PromiseSyncNoStandby
	}
	return PromiseSync
}

// Explain says in a sentence why Promise is what it is.
func (r Replication) Explain() string {
	switch {
	case r.StandbyNames == "":
		return fmt.Sprintf("synchronous_standby_names is empty (%d standbys streaming asynchronously): commits reported after the last one a standby received are lost if it is promoted", r.Standbys)
	case !r.syncCommit():
		return fmt.Sprintf("synchronous_commit is %s: commits do not wait for the synchronous standbys, so reported ones can be lost if a standby is promoted", r.Commit)
	case !r.SyncVisible:
		return "cannot see which standbys are synchronous: grant pg_monitor to the front-end's role"
	case r.SyncStandbys == 0:
		return fmt.Sprintf("synchronous_standby_names is %q but no synchronous standby is attached: commits wait until one is", r.StandbyNames)
	}
	return fmt.Sprintf("%d synchronous standbys attached (synchronous_standby_names %q, synchronous_commit %s): every reported commit survives their promotion", r.SyncStandbys, r.StandbyNames, r.Commit)
}

// ReadReplication reads the replication settings and standbys of the
// server db reaches.
func ReadReplication(ctx context.Context, db DB) (Replication, error) {
	var r Replication
	var hidden int
	err := db.QueryRow(ctx, `SELECT current_setting('synchronous_standby_names'), current_setting('synchronous_commit'),
		(SELECT count(*) FROM pg_stat_replication),
		(SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')),
		(SELECT count(*) FROM pg_stat_replication WHERE sync_state IS NULL)`).Scan(&r.StandbyNames, &r.Commit, &r.Standbys, &r.SyncStandbys, &hidden)
	if err != nil {
		return Replication{}, fmt.Errorf("read replication settings: %w", err)
	}
	r.SyncVisible = hidden == 0
	return r, nil
}
