package test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"hafe.dev/hafe/test/harness"
)

// TestPostgresImageChecksPasswords starts the PostgreSQL image as the other
// tests do and checks the authentication the official image's users expect:
// the right password over TCP works, a wrong one is refused.
func TestPostgresImageChecksPasswords(t *testing.T) {
	harness.RequireDocker(t)
	nw := harness.NewNetwork(t)
	pg := harness.StartPostgres(t, nw, harness.PostgresConfig{})

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	conn := pg.Connect(t)
	var user, db, fsync string
	if err := conn.QueryRow(ctx, "SELECT current_user, current_database(), current_setting('fsync')").Scan(&user, &db, &fsync); err != nil {
		t.Fatal(err)
	}
	if user != pg.Config.User || db != pg.Config.Database {
		t.Errorf("connected as %s to %s, want %s to %s", user, db, pg.Config.User, pg.Config.Database)
	}
	if fsync != "off" {
		t.Errorf("fsync = %s: the command's `-c fsync=off` did not reach the server", fsync)
	}

	bad := pg.URLFor(pg.Config.User, "not-the-password", pg.Config.Database)
	c, err := pgx.Connect(ctx, bad)
	if err == nil {
		c.Close(ctx)
		t.Fatal("connected with a wrong password")
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Fatalf("wrong password: got %v, want SQLSTATE 28P01 (invalid_password)", err)
	}
}

// TestPostgresImageShipsHafeExtension checks that CREATE EXTENSION hafe works
// in the image, once backend-ext/extension holds the extension's files.
func TestPostgresImageShipsHafeExtension(t *testing.T) {
	harness.RequireDocker(t)
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "backend-ext", "extension", "hafe.control")); err != nil {
		t.Skip("backend-ext/extension/hafe.control not there yet")
	}
	nw := harness.NewNetwork(t)
	pg := harness.StartPostgres(t, nw, harness.PostgresConfig{})

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	conn := pg.Connect(t)
	var available int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_available_extensions WHERE name = 'hafe'").Scan(&available); err != nil {
		t.Fatal(err)
	}
	if available == 0 {
		if !strings.HasPrefix(harness.PostgresImage(), "hafe-postgres") {
			t.Skipf("image %s is not built by test/images/build-postgres.sh and has no hafe extension", harness.PostgresImage())
		}
		t.Fatalf("image %s does not ship the hafe extension", harness.PostgresImage())
	}
	if _, err := conn.Exec(ctx, "CREATE EXTENSION hafe"); err != nil {
		t.Fatalf("CREATE EXTENSION hafe: %v", err)
	}
	var version string
	if err := conn.QueryRow(ctx, "SELECT extversion FROM pg_extension WHERE extname = 'hafe'").Scan(&version); err != nil {
		t.Fatal(err)
	}
	var defaultVersion string
	if err := conn.QueryRow(ctx, "SELECT default_version FROM pg_available_extensions WHERE name = 'hafe'").Scan(&defaultVersion); err != nil {
		t.Fatal(err)
	}
	if version != defaultVersion {
		t.Errorf("installed hafe %s, default version is %s", version, defaultVersion)
	}
	t.Logf("hafe extension %s installed", version)
}

// TestPostgresImageKeepsCommitsAcrossCrash kills the server (SIGKILL, no
// shutdown checkpoint) and starts the container again: committed rows are
// back after WAL recovery, and the harness follows the new published port.
func TestPostgresImageKeepsCommitsAcrossCrash(t *testing.T) {
	harness.RequireDocker(t)
	nw := harness.NewNetwork(t)
	pg := harness.StartPostgres(t, nw, harness.PostgresConfig{})

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	conn := pg.Connect(t)
	if _, err := conn.Exec(ctx, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	start := time.Now()
	if err := pg.Restart(ctx, 0); err != nil {
		t.Fatalf("restart after kill: %v", err)
	}
	t.Logf("killed and back in %s", time.Since(start).Round(time.Millisecond))

	conn = pg.Connect(t)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("%d rows after crash recovery, want 2", n)
	}
}
