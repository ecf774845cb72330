package backendext

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"hafe.dev/hafe/internal/pgtemp"
)

func TestReplicationPromise(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    Replication
		want string
	}{
		{"no standby names", Replication{Commit: "on", SyncVisible: true, Standbys: 1}, PromiseAsync},
		{"commit local", Replication{StandbyNames: "*", Commit: "local", SyncVisible: true, Standbys: 1, SyncStandbys: 1}, PromiseAsync},
		{"commit off", Replication{StandbyNames: "*", Commit: "off", SyncVisible: true, Standbys: 1, SyncStandbys: 1}, PromiseAsync},
		{"sync attached", Replication{StandbyNames: "*", Commit: "on", SyncVisible: true, Standbys: 2, SyncStandbys: 1}, PromiseSync},
		{"remote_apply attached", Replication{StandbyNames: "FIRST 1 (s1)", Commit: "remote_apply", SyncVisible: true, Standbys: 1, SyncStandbys: 1}, PromiseSync},
		{"sync none attached", Replication{StandbyNames: "*", Commit: "on", SyncVisible: true}, PromiseSyncNoStandby},
		{"sync not visible", Replication{StandbyNames: "*", Commit: "on", Standbys: 1}, PromiseUnknown},
	} {
		if got := tc.r.Promise(); got != tc.want {
			t.Errorf("%s: promise %s, want %s (%s)", tc.name, got, tc.want, tc.r.Explain())
		}
		if tc.r.Explain() == "" {
			t.Errorf("%s: no explanation", tc.name)
		}
	}
}

// TestReadReplicationSeesSynchronousStandby reads the settings of a real
// primary with a real streaming standby: asynchronous at first, then
// synchronous once synchronous_standby_names names it, then "no standby"
// once the standby is gone; synchronous_commit = local in the session
// makes it asynchronous whatever the server says.
func TestReadReplicationSeesSynchronousStandby(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	primary, err := pgtemp.Start(ctx, pgtemp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer primary.Stop()
	standby, err := pgtemp.StartStandby(ctx, primary, "s1")
	if err != nil {
		t.Fatal(err)
	}
	defer standby.Stop()
	c, err := pgx.Connect(ctx, primary.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	read := func(want string) Replication {
		t.Helper()
		var r Replication
		for range 100 {
			if r, err = ReadReplication(ctx, c); err != nil {
				t.Fatal(err)
			}
			if r.Promise() == want {
				return r
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("promise %s (%+v: %s), want %s", r.Promise(), r, r.Explain(), want)
		return r
	}
	exec := func(q string) {
		t.Helper()
		if _, err := c.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}

	// The standby may not have connected yet: wait until it streams.
	var r Replication
	for range 100 {
		if r = read(PromiseAsync); r.Standbys > 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if r.Standbys != 1 || r.SyncStandbys != 0 {
		t.Errorf("asynchronous: %+v, want 1 standby, 0 synchronous", r)
	}
	exec("ALTER SYSTEM SET synchronous_standby_names = 's1'")
	exec("SELECT pg_reload_conf()")
	r = read(PromiseSync)
	t.Logf("sync: %s", r.Explain())
	exec("SET synchronous_commit = local")
	read(PromiseAsync)
	exec("RESET synchronous_commit")
	standby.Crash()
	r = read(PromiseSyncNoStandby)
	t.Logf("standby gone: %s", r.Explain())
	exec("ALTER SYSTEM RESET synchronous_standby_names")
	exec("SELECT pg_reload_conf()")
	read(PromiseAsync)
}

// TestWritableSessionsOnlyReachThePrimary: a multi-host URL naming the
// standby first reaches the primary; one naming only the standby is
// refused, as a front-end must never write to a standby. After the
// standby's promotion the same URL reaches it, as another server run.
func TestWritableSessionsOnlyReachThePrimary(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	primary, err := pgtemp.Start(ctx, pgtemp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer primary.Stop()
	standby, err := pgtemp.StartStandby(ctx, primary, "s1")
	if err != nil {
		t.Fatal(err)
	}
	defer standby.Stop()
	connect := func(url string) (*pgx.Conn, error) {
		cfg, err := pgx.ParseConfig(url)
		if err != nil {
			t.Fatal(err)
		}
		RequireWritable(&cfg.Config)
		return pgx.ConnectConfig(ctx, cfg)
	}
	both := "postgres://postgres@127.0.0.1:" + strconv.Itoa(standby.Port()) + ",127.0.0.1:" + strconv.Itoa(primary.Port()) + "/postgres?sslmode=disable"
	c, err := connect(both)
	if err != nil {
		t.Fatal(err)
	}
	first := ServerOf(c.PgConn())
	var rec bool
	if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil || rec {
		t.Fatalf("the multi-host URL reached a server in recovery (%v)", err)
	}
	c.Close(ctx)
	if c, err := connect(standby.URL("postgres")); err == nil {
		c.Close(ctx)
		t.Fatal("a session on the standby was accepted")
	} else {
		t.Logf("standby refused: %v", err)
	}

	primary.Crash()
	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	c, err = connect(both)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if ServerOf(c.PgConn()) == first || ServerOf(c.PgConn()) == "" {
		t.Errorf("after the promotion the session reached server run %q, before %q: want another", ServerOf(c.PgConn()), first)
	}
}
