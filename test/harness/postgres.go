package harness

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	tcnetwork "github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"
)

// PostgresConfig describes the PostgreSQL container; zero fields take the
// defaults shown.
type PostgresConfig struct {
	Alias    string // network alias, default "pg"
	User     string // superuser, default "postgres"
	Password string // default "hafe-test"
	Database string // default "hafe"
	// Image overrides PostgresImage().
	Image string
	// Args are extra server settings, e.g. "-c", "max_connections=200".
	Args []string
	// InitScripts are host paths of *.sql / *.sh files run once at init, in
	// order.
	InitScripts []string
	// StartupTimeout bounds the wait for readiness, default 2 minutes.
	StartupTimeout time.Duration
}

func (c *PostgresConfig) setDefaults() {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&c.Alias, "pg")
	def(&c.User, "postgres")
	def(&c.Password, "hafe-test")
	def(&c.Database, "hafe")
	def(&c.Image, PostgresImage())
	if c.StartupTimeout == 0 {
		c.StartupTimeout = 2 * time.Minute
	}
}

// Postgres is a running PostgreSQL container.
type Postgres struct {
	*Container
	Config PostgresConfig
	// URL reaches the database from the test process (published port on
	// localhost), e.g. postgres://postgres:hafe-test@localhost:32771/hafe?sslmode=disable.
	// Restart, Start and Rejoin update it if the published port changed (it
	// does not where ports are pinned).
	URL string
	// NetworkURL reaches it from other containers on the test network,
	// e.g. postgres://postgres:hafe-test@pg:5432/hafe?sslmode=disable.
	NetworkURL string

	pg *tcpostgres.PostgresContainer
}

// StartPostgres starts PostgreSQL from HAFE_PG_IMAGE (built first if it is
// ours) on nw, waits until it accepts connections, and removes it when the
// test ends.
func StartPostgres(t testing.TB, nw *Network, cfg PostgresConfig) *Postgres {
	t.Helper()
	RequireDocker(t)
	cfg.setDefaults()
	if strings.HasPrefix(cfg.Image, "hafe-postgres") {
		ensureImage(t, cfg.Image, "build-postgres.sh", "HAFE_PG_IMAGE_BUILD")
	}

	ctx, cancel := context.WithTimeout(context.Background(), cfg.StartupTimeout+time.Minute)
	defer cancel()
	opts := []testcontainers.ContainerCustomizer{
		tcpostgres.WithUsername(cfg.User),
		tcpostgres.WithPassword(cfg.Password),
		tcpostgres.WithDatabase(cfg.Database),
		testcontainers.WithLabels(map[string]string{"dev.hafe.test": t.Name()}),
		testcontainers.WithLogger(tclog.TestLogger(t)),
	}
	if nw != nil {
		opts = append(opts, tcnetwork.WithNetwork([]string{cfg.Alias}, &testcontainers.DockerNetwork{Name: nw.Name, ID: nw.ID}),
			tcnetwork.WithBridgeNetwork())
	}
	if len(cfg.InitScripts) > 0 {
		opts = append(opts, tcpostgres.WithOrderedInitScripts(cfg.InitScripts...))
	}
	if len(cfg.Args) > 0 {
		opts = append(opts, testcontainers.WithCmdArgs(cfg.Args...))
	}
	// As tcpostgres.BasicWaitStrategies, with our deadline: the init-time
	// server and the real one each log readiness once.
	opts = append(opts, testcontainers.WithWaitStrategyAndDeadline(cfg.StartupTimeout,
		wait.ForLog("database system is ready to accept connections").WithOccurrence(2),
		wait.ForListeningPort("5432/tcp")))

	start := time.Now()
	pg, err := runPinned([]string{"5432/tcp"}, func(publish testcontainers.ContainerCustomizer) (*tcpostgres.PostgresContainer, error) {
		return tcpostgres.Run(ctx, cfg.Image, append(opts, publish)...)
	})
	p := &Postgres{Config: cfg, pg: pg}
	if !isNilContainer(pg) {
		p.Container = &Container{Alias: cfg.Alias, tc: pg, net: nw, portsChanged: p.refreshURL}
		terminateOnCleanup(t, p.Container)
	}
	if err != nil {
		t.Fatalf("start postgres (%s): %v", cfg.Image, err)
	}
	if err := p.refreshURL(ctx); err != nil {
		t.Fatal(err)
	}
	p.NetworkURL = fmt.Sprintf("postgres://%s@%s:5432/%s?sslmode=disable",
		url.UserPassword(cfg.User, cfg.Password).String(), cfg.Alias, url.PathEscape(cfg.Database))
	if err := p.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("postgres %s up in %s: %s (in network: %s)", cfg.Image, time.Since(start).Round(time.Millisecond), p.URL, p.NetworkURL)
	return p
}

func (p *Postgres) refreshURL(ctx context.Context) error {
	u, err := p.pg.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		return fmt.Errorf("postgres connection string: %w", err)
	}
	p.URL = loopback(u)
	return nil
}

// URLFor is URL with another user, password and database, for connecting
// as a role a test created.
func (p *Postgres) URLFor(user, password, database string) string {
	u, err := url.Parse(p.URL)
	if err != nil {
		panic(err) // built by ConnectionString: always parses
	}
	u.User = url.UserPassword(user, password)
	u.Path = "/" + database
	return u.String()
}

// NetworkURLFor is NetworkURL with another user and password, for a
// container that logs in as a role a test created.
func (p *Postgres) NetworkURLFor(user, password string) string {
	u, err := url.Parse(p.NetworkURL)
	if err != nil {
		panic(err) // built above: always parses
	}
	u.User = url.UserPassword(user, password)
	return u.String()
}

// Connect opens a pgx connection from the test process, closed when the test
// ends.
func (p *Postgres) Connect(t testing.TB) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.URL)
	if err != nil {
		t.Fatalf("connect to %s: %v", p.URL, err)
	}
	t.Cleanup(func() {
		ctx, cancel := cleanupContext()
		defer cancel()
		conn.Close(ctx)
	})
	return conn
}

// WaitReady polls until the server answers a query (after start, PostgreSQL
// may still be in recovery for a moment after its port opens).
func (p *Postgres) WaitReady(ctx context.Context) error {
	var last error
	for {
		attempt, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := pgx.Connect(attempt, p.URL)
		if err == nil {
			_, err = conn.Exec(attempt, "SELECT 1")
			conn.Close(attempt)
		}
		cancel()
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("postgres at %s not ready: %w", p.URL, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Restart stops PostgreSQL and starts it again, waiting until it answers.
// With grace 0 the server is killed (SIGKILL) and recovers from its WAL on
// start, like after a crash; otherwise it gets a fast shutdown first. URL is
// updated: the published port may change.
func (p *Postgres) Restart(ctx context.Context, grace time.Duration) error {
	if grace == 0 {
		if err := p.Kill(ctx); err != nil {
			return err
		}
	} else if err := p.Stop(ctx, grace); err != nil {
		return err
	}
	if err := p.Start(ctx); err != nil {
		return fmt.Errorf("start postgres again: %w", err)
	}
	return p.WaitReady(ctx)
}

// Snapshot saves the database's contents (as a template database), to reset
// it between subtests cheaply with Restore. It runs psql in the container.
func (p *Postgres) Snapshot(ctx context.Context) error { return p.pg.Snapshot(ctx) }

// Restore brings back the contents saved by Snapshot.
func (p *Postgres) Restore(ctx context.Context) error { return p.pg.Restore(ctx) }
