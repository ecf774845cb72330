package main

import (
	"context"
	"fmt"

	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/frontend"
)

// requireSyncHelp is --require-sync-replication's help.
const requireSyncHelp = "refuse to serve unless the database has a synchronous standby attached (synchronous_standby_names set, synchronous_commit on, remote_write or remote_apply), so that every reported commit survives a failover; /readyz fails while it has none"

// checkReplication reads the database's replication settings once at
// start (the front-end logs which durability promise holds) and, with
// --require-sync-replication, refuses to serve without a synchronous
// standby.
func checkReplication(ctx context.Context, fe *frontend.Server, require bool) error {
	r, promise, err := fe.CheckReplication(ctx)
	if !require {
		return nil
	}
	if err != nil {
		return exitError{code: 1, err: fmt.Errorf("refusing to serve: --require-sync-replication: %w (the role needs to read pg_settings and pg_stat_replication: grant it pg_monitor)", err)}
	}
	if promise != backendext.PromiseSync {
		return exitError{code: 1, err: fmt.Errorf("refusing to serve: --require-sync-replication: %s", r.Explain())}
	}
	return nil
}
