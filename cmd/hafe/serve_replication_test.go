package main

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"hafe.dev/hafe/internal/pgtemp"
	"hafe.dev/hafe/internal/pgtemp/pgtest"
)

// TestServeRequiringSyncReplicationRefusesWithoutAStandby: a database
// with no synchronous standby cannot keep reported commits across a
// failover; --require-sync-replication makes hafe serve refuse it, once,
// saying why.
func TestServeRequiringSyncReplicationRefusesWithoutAStandby(t *testing.T) {
	bin := buildServeBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pg, err := pgtemp.Start(ctx, pgtemp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })
	url := pgtest.Database(t, pg, "nosync")
	out, err := exec.CommandContext(ctx, bin, "serve", "--db", url, "--listen", "127.0.0.1:0", "--allow-superuser", "--require-sync-replication").CombinedOutput()
	if code := serveExitCode(err); code != 1 {
		t.Fatalf("exit %d, want 1; output:\n%s", code, out)
	}
	if want := "refusing to serve: --require-sync-replication: synchronous_standby_names is empty"; !strings.Contains(string(out), want) {
		t.Fatalf("output does not say %q:\n%s", want, out)
	}
	if !strings.Contains(string(out), "promise=async") {
		t.Errorf("no log line with the promise:\n%s", out)
	}
}
