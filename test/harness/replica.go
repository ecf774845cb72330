package harness

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	tcnetwork "github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"
)

// ReplicationInitScript is an init script (PostgresConfig.InitScripts)
// that lets the superuser connect for replication from any host with its
// password, so that a standby can be started from the server
// (StartStandby). It is written into the test's temporary directory.
func ReplicationInitScript(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "allow-replication.sh")
	script := "#!/bin/sh\n" +
		`echo "host replication all all ${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" >> "$PGDATA/pg_hba.conf"` + "\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// StartStandby starts a streaming standby of primary (started with
// ReplicationInitScript) on nw under alias, from the same image: it
// copies the primary with pg_basebackup -R (application_name alias, for
// synchronous_standby_names) and runs as a hot standby. Its URL and
// NetworkURL name the primary's database, user and password.
func StartStandby(t testing.TB, nw *Network, primary *Postgres, alias string) *Postgres {
	t.Helper()
	cfg := primary.Config
	cfg.Alias = alias
	cfg.InitScripts = nil
	ctx, cancel := context.WithTimeout(context.Background(), cfg.StartupTimeout+time.Minute)
	defer cancel()
	conninfo := fmt.Sprintf("host=%s port=5432 user=%s password=%s application_name=%s", primary.Alias, cfg.User, cfg.Password, alias)
	// As root: the data directory for postgres, the copy as postgres, then
	// the image's entrypoint, which finds the directory initialised and
	// starts the server (standby.signal makes it a standby).
	script := strings.Join([]string{
		`set -e`,
		`mkdir -p "$PGDATA" && chown postgres:postgres "$PGDATA" && chmod 0700 "$PGDATA"`,
		`setpriv --reuid=postgres --regid=postgres --init-groups pg_basebackup -D "$PGDATA" -R -X stream -c fast -d "$1"`,
		`exec docker-entrypoint.sh postgres ` + strings.Join(cfg.Args, " "),
	}, "\n")
	opts := []testcontainers.ContainerCustomizer{
		tcpostgres.WithUsername(cfg.User),
		tcpostgres.WithPassword(cfg.Password),
		tcpostgres.WithDatabase(cfg.Database),
		testcontainers.WithLabels(map[string]string{"dev.hafe.test": t.Name()}),
		testcontainers.WithLogger(tclog.TestLogger(t)),
		testcontainers.WithEntrypoint("bash", "-c", script, "standby", conninfo),
		testcontainers.WithCmd(),
		testcontainers.WithWaitStrategyAndDeadline(cfg.StartupTimeout,
			wait.ForLog("database system is ready to accept read-only connections"),
			wait.ForListeningPort("5432/tcp")),
	}
	if nw != nil {
		opts = append(opts, tcnetwork.WithNetwork([]string{alias}, &testcontainers.DockerNetwork{Name: nw.Name, ID: nw.ID}),
			tcnetwork.WithBridgeNetwork())
	}
	start := time.Now()
	pg, err := runPinned([]string{"5432/tcp"}, func(publish testcontainers.ContainerCustomizer) (*tcpostgres.PostgresContainer, error) {
		return tcpostgres.Run(ctx, cfg.Image, append(opts, publish)...)
	})
	p := &Postgres{Config: cfg, pg: pg}
	if !isNilContainer(pg) {
		p.Container = &Container{Alias: alias, tc: pg, net: nw, portsChanged: p.refreshURL}
		terminateOnCleanup(t, p.Container)
	}
	if err != nil {
		t.Fatalf("start standby %s (%s): %v", alias, cfg.Image, err)
	}
	if err := p.refreshURL(ctx); err != nil {
		t.Fatal(err)
	}
	p.NetworkURL = fmt.Sprintf("postgres://%s@%s:5432/%s?sslmode=disable",
		url.UserPassword(cfg.User, cfg.Password).String(), alias, url.PathEscape(cfg.Database))
	if err := p.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("standby %s of %s up in %s: %s", alias, primary.Alias, time.Since(start).Round(time.Millisecond), p.URL)
	return p
}

// MultiHostURL is a URL for the containers on the test network that names
// every server of pgs, in order, as a front-end's --db: user, password
// and database are those of pgs[0].NetworkURLFor(user, password).
func MultiHostURL(user, password string, pgs ...*Postgres) string {
	var hosts []string
	for _, p := range pgs {
		hosts = append(hosts, p.Alias+":5432")
	}
	one := pgs[0].NetworkURLFor(user, password)
	return strings.Replace(one, "@"+pgs[0].Alias+":5432/", "@"+strings.Join(hosts, ",")+"/", 1)
}
