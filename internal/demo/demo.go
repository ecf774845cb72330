package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"

	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/client"
	"hafe.dev/hafe/internal/pgtemp"
	hafesql "hafe.dev/hafe/sql"
)

// Options configure a run; see cmd/hafe's demo flags for their meaning.
type Options struct {
	// Postgres is "auto", "local" or "container".
	Postgres     string
	Transactions int
	KillAt       int
	Seed         uint64
	Keep         bool
	// Stay keeps the cluster up after the checks, with the killed
	// front-end restarted, until ctx ends (Ctrl-C).
	Stay bool
	// HTTP sends the batch over plain HTTP, which resumes it on another
	// front-end with the same Idempotency-Key; by default it goes over
	// MTCP, whose connection moves without a second request.
	HTTP bool
	// DrainAt, over MTCP: drain (SIGTERM) the front-end serving the batch
	// when this many lines have arrived (0: no drain).
	DrainAt int
	// Agent then sends a second batch with curl (or Go's plain net/http)
	// through hafe agent and kills the front-end serving it.
	Agent bool
}

// AdminToken is the demo front-ends' --admin-token, for the dashboard.
const AdminToken = "demo-admin"

// Run narrates one demo run on out and returns an error when a check fails
// or the run is interrupted.
func Run(ctx context.Context, opts Options, out io.Writer) error {
	d := &demo{out: out, start: time.Now()}
	err := d.run(ctx, opts)
	if err != nil && ctx.Err() != nil {
		d.say("interrupted; everything started was stopped and removed")
		return fmt.Errorf("demo: %w", context.Cause(ctx))
	}
	return err
}

// demo is one run: what it started (stopped in reverse order) and its
// narration.
type demo struct {
	out        io.Writer
	start      time.Time
	cleanups   []func()
	work       string
	clusterKey string // the front-ends' --cluster-key-file
	children   map[string]*child
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, "[%5.2fs] %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, args...))
}

func (d *demo) atExit(f func()) { d.cleanups = append(d.cleanups, f) }

func (d *demo) run(ctx context.Context, opts Options) (err error) {
	n, killAt, keep := opts.Transactions, opts.KillAt, opts.Keep
	defer func() {
		for i := len(d.cleanups) - 1; i >= 0; i-- {
			d.cleanups[i]()
		}
	}()
	if d.work, err = os.MkdirTemp("", "hafe-demo-"); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	d.atExit(func() {
		if keep || (err != nil && ctx.Err() == nil) {
			d.say("logs kept in %s", d.work)
			return
		}
		os.RemoveAll(d.work)
	})

	dbURL, err := d.startPostgres(ctx, opts.Postgres)
	if err != nil {
		return err
	}
	if err := d.installBank(ctx, dbURL); err != nil {
		return err
	}
	d.children = map[string]*child{}
	d.clusterKey = filepath.Join(d.work, "cluster.key")
	if err := writeClusterKey(d.clusterKey); err != nil {
		return err
	}
	d.atExit(d.stopFrontEnds) // all of d.children, restarted ones too
	var urls []string
	for i := 1; i <= 3; i++ {
		c, err := d.startFrontEnd(ctx, dbURL, fmt.Sprintf("fe%d", i))
		if err != nil {
			return err
		}
		urls = append(urls, c.url)
	}
	if err := d.waitReady(ctx); err != nil {
		return err
	}
	d.say("front-ends ready: fe1 %s, fe2 %s, fe3 %s (heartbeat 200ms; a front-end silent for 1s counts as gone)", urls[0], urls[1], urls[2])

	batch := demoBatch(n, opts.Seed)
	body, _ := json.Marshal(map[string]any{"transactions": batch})
	var res *submitted
	if opts.HTTP {
		res, err = d.submit(ctx, urls, body, n, killAt)
	} else {
		res, err = d.submitMTCP(ctx, body, n, killAt, opts.DrainAt)
	}
	if err != nil {
		return err
	}
	batches := []sent{{"the Go client's batch over MTCP", batch, res}}
	if opts.HTTP {
		batches[0].name = "the batch over plain HTTP"
	}
	if opts.Agent {
		// The same story for an application that cannot link hafe's
		// client: curl, through hafe agent. fe2 takes the connection.
		if err := d.restartExited(ctx, dbURL); err != nil {
			return err
		}
		second := demoBatch(n, opts.Seed+1)
		body, _ := json.Marshal(map[string]any{"transactions": second})
		res, err := d.submitThroughAgent(ctx, body, n, killAt, d.children["fe2"])
		if err != nil {
			return err
		}
		batches = append(batches, sent{plainClient() + "'s batch through hafe agent", second, res})
	}
	if err := d.verify(ctx, dbURL, batches); err != nil || !opts.Stay {
		return err
	}
	return d.stay(ctx, dbURL)
}

// stay restarts the front-ends the demo killed, under their names, prints
// where everything is and waits for ctx to end.
func (d *demo) stay(ctx context.Context, dbURL string) error {
	if err := d.restartExited(ctx, dbURL); err != nil {
		return err
	}
	fe1 := d.children["fe1"].url
	fmt.Fprintf(d.out, `
The cluster stays up until Ctrl-C:
  dashboard   %s/dashboard/   (admin token: %s)
  metrics     %s/metrics
  front-ends  fe1 %s, fe2 %s, fe3 %s
  MTCP        fe1 %s, fe2 %s, fe3 %s
  database    %s
  logs        %s
Try:
  curl -N -H 'Content-Type: application/json' %s/v1/batches -d '{"transactions":[{"template":"transfer","args":{"from":1,"to":2,"amount":5}},{"template":"balance","args":{"id":1}}]}'
  hafe submit sql/demo/transfers.json --mtcp --to %s   (then kill -9 the front-end it names)
  hafe batches ls --to %s --admin-token %s

`, fe1, AdminToken, fe1, fe1, d.children["fe2"].url, d.children["fe3"].url,
		d.children["fe1"].mtcp, d.children["fe2"].mtcp, d.children["fe3"].mtcp, dbURL, d.work, fe1, d.children["fe1"].mtcp, fe1, AdminToken)
	<-ctx.Done()
	d.say("Ctrl-C: stopping the cluster")
	return nil
}

// startPostgres starts the throwaway server and returns a database URL.
func (d *demo) startPostgres(ctx context.Context, source string) (string, error) {
	if source != "container" {
		bin, err := pgtemp.FindBinDir()
		if err == nil {
			d.say("starting a throwaway PostgreSQL from %s (initdb in a temporary directory)", bin)
			s, err := pgtemp.Start(ctx, pgtemp.Options{BinDir: bin})
			if err != nil {
				return "", fmt.Errorf("demo: %w", err)
			}
			d.atExit(func() { s.Stop(); d.say("PostgreSQL stopped and its directory removed") })
			url, err := s.NewDatabase(ctx, "hafe_demo")
			if err != nil {
				return "", fmt.Errorf("demo: %w", err)
			}
			d.say("PostgreSQL ready on 127.0.0.1:%d", s.Port())
			return url, nil
		}
		if source == "local" {
			return "", fmt.Errorf("demo: %w", err)
		}
		d.say("no PostgreSQL server binaries here (%v); using a container instead", err)
	}
	return d.startContainer(ctx)
}

func (d *demo) startContainer(ctx context.Context) (string, error) {
	// This machine may look like a container (/.dockerenv); without the
	// override testcontainers dials the default gateway, not the published
	// port. Ryuk would need a registry; the container is removed below.
	for k, v := range map[string]string{"TESTCONTAINERS_HOST_OVERRIDE": "localhost", "TESTCONTAINERS_RYUK_DISABLED": "true"} {
		if _, ok := os.LookupEnv(k); !ok {
			os.Setenv(k, v)
		}
	}
	image := os.Getenv("HAFE_PG_IMAGE")
	if image == "" {
		image = "hafe-postgres:15"
	}
	logFile, err := os.Create(filepath.Join(d.work, "postgres-container.log"))
	if err != nil {
		return "", fmt.Errorf("demo: %w", err)
	}
	d.atExit(func() { logFile.Close() })
	logger := stdlog.New(logFile, "", stdlog.LstdFlags)
	tclog.SetDefault(logger)
	d.say("starting PostgreSQL in a container from image %s (testcontainers)", image)
	c, err := tcpostgres.Run(ctx, image,
		tcpostgres.WithDatabase("hafe_demo"), tcpostgres.WithUsername("postgres"), tcpostgres.WithPassword("hafe-demo"),
		tcpostgres.BasicWaitStrategies(), testcontainers.WithLogger(logger),
		testcontainers.WithLabels(map[string]string{"dev.hafe.demo": "true"}))
	if c != nil {
		d.atExit(func() {
			if err := testcontainers.TerminateContainer(c); err != nil {
				d.say("removing the PostgreSQL container: %v", err)
				return
			}
			d.say("PostgreSQL container removed")
		})
	}
	if err != nil {
		return "", fmt.Errorf("demo: start PostgreSQL container from %s (build it with test/images/build-postgres.sh, or set HAFE_PG_IMAGE): %w", image, err)
	}
	url, err := c.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		return "", fmt.Errorf("demo: %w", err)
	}
	d.say("PostgreSQL ready in container %.12s", c.GetContainerID())
	return url, nil
}

func (d *demo) installBank(ctx context.Context, dbURL string) error {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return fmt.Errorf("demo: connect: %w", err)
	}
	defer conn.Close(context.Background())
	res, err := backendext.Install(ctx, conn, backendext.InstallOptions{}, nil)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if _, err := conn.Exec(ctx, hafesql.DemoSchema()); err != nil {
		return fmt.Errorf("demo: load the demo bank: %w", err)
	}
	d.say("installed hafe %s (%s) and the demo bank: 100 accounts of 1000.00, 100000.00 in all", res.To, res.Mode)
	return nil
}

// child is a front-end process.
type child struct {
	id   string
	url  string
	mtcp string // --mtcp-listen address
	log  string
	cmd  *exec.Cmd
	done chan struct{}
}

func (d *demo) startFrontEnd(ctx context.Context, dbURL, id string) (*child, error) {
	addrs, err := freeLocalAddrs(2)
	if err != nil {
		return nil, err
	}
	addr, maddr := addrs[0], addrs[1]
	logName := id + ".log"
	if _, err := os.Stat(filepath.Join(d.work, logName)); err == nil {
		logName = id + "-restarted.log" // --stay: keep the killed run's log
	}
	// The demo's throwaway database has only its superuser; a real
	// deployment connects as a role without SUPERUSER.
	c, err := d.startChild(id, logName, "serve", "--db", dbURL, "--listen", addr, "--id", id, "--allow-superuser",
		"--heartbeat", "200ms", "--owner-liveness", "1s", "--fence-grace", "1s", "--drain-timeout", "5s", "--admin-token", AdminToken,
		"--mtcp-listen", maddr, "--cluster-key-file", d.clusterKey)
	if err != nil {
		return nil, err
	}
	c.url, c.mtcp = "http://"+addr, maddr
	d.children[id] = c
	d.say("started front-end %s: pid %d, %s, MTCP %s", id, c.cmd.Process.Pid, c.url, c.mtcp)
	return c, nil
}

// startChild starts this hafe binary with args, its output in the work
// directory's logName.
func (d *demo) startChild(id, logName string, args ...string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("demo: find the hafe binary: %w", err)
	}
	logPath := filepath.Join(d.work, logName)
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	cmd := exec.Command(self, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = withoutHafeEnv(os.Environ())
	// Own process group, so a Ctrl-C reaches only us and we stop the
	// children in order; and killed with us if we die without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("demo: start %s: %w", id, err)
	}
	c := &child{id: id, log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); logFile.Close(); close(c.done) }()
	return c, nil
}

// stopFrontEnds stops the front-ends that still run, all at once.
func (d *demo) stopFrontEnds() {
	var wg sync.WaitGroup
	running := 0
	for _, c := range d.children {
		if !c.exited() {
			running++
			wg.Go(c.stop)
		}
	}
	wg.Wait()
	if running > 0 {
		d.say("front-ends stopped")
	}
}

// stop ends the process: SIGTERM, then SIGKILL if it lingers.
func (c *child) stop() {
	select {
	case <-c.done:
		return
	default:
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(3 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
}

func (c *child) kill() {
	c.cmd.Process.Kill()
	<-c.done
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

func withoutHafeEnv(env []string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, "HAFE_") {
			out = append(out, kv)
		}
	}
	return out
}

// freeLocalAddrs returns n loopback addresses with ports free now, all
// different: their listeners are open at once, so the system cannot hand
// out one port twice.
func freeLocalAddrs(n int) ([]string, error) {
	var out []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("demo: find a free port: %w", err)
		}
		defer l.Close()
		out = append(out, l.Addr().String())
	}
	return out, nil
}

// waitReady waits until every front-end answers /readyz.
func (d *demo) waitReady(ctx context.Context) error {
	for _, id := range []string{"fe1", "fe2", "fe3"} {
		c := d.children[id]
		if err := waitAnswers(ctx, c, c.url+"/readyz"); err != nil {
			return err
		}
	}
	return nil
}

// waitAnswers waits up to 15s until url answers 200, while c runs.
func waitAnswers(ctx context.Context, c *child, url string) error {
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(15 * time.Second)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case c.exited():
			return fmt.Errorf("demo: %s exited at start: %s", c.id, tail(c.log, 5))
		case time.Now().After(deadline):
			return fmt.Errorf("demo: %s not ready after 15s: %s", c.id, tail(c.log, 5))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// transfer is one transaction of the demo batch.
type transfer struct {
	Template string       `json:"template"`
	Args     transferArgs `json:"args"`
}

type transferArgs struct {
	From   int         `json:"from"`
	To     int         `json:"to"`
	Amount json.Number `json:"amount"`
}

// demoBatch makes n transfers between random accounts: most small, every
// twentieth large enough that it aborts unless its account has grown.
func demoBatch(n int, seed uint64) []transfer {
	r := rand.New(rand.NewPCG(seed, 0x686166652d64656d))
	out := make([]transfer, n)
	for i := range out {
		from := 1 + r.IntN(100)
		to := 1 + r.IntN(99)
		if to >= from {
			to++
		}
		cents := 100 + r.IntN(30000)
		if i%20 == 19 {
			cents = 150000 + r.IntN(250000)
		}
		out[i] = transfer{"transfer", transferArgs{from, to, json.Number(fmt.Sprintf("%d.%02d", cents/100, cents%100))}}
	}
	return out
}

// submitted is what the client saw.
type submitted struct {
	sum    client.Summary
	status map[int]string // seq -> status as reported
	lines  map[int]string
}

func (d *demo) submit(ctx context.Context, urls []string, body []byte, n, killAt int) (*submitted, error) {
	res := &submitted{status: map[int]string{}, lines: map[int]string{}}
	killed := ""
	name := map[string]string{}
	for _, c := range d.children {
		name[c.url] = c.id
	}
	begin := time.Now()
	var killTime time.Time
	observe := func(e client.Event) {
		switch e.Kind {
		case client.EventAttempt:
			if e.Attempt == 1 {
				d.say("submitting %d transfers to fe1 with Idempotency-Key %s", n, res.sum.IdempotencyKey)
			}
		case client.EventStream:
			if e.Resumed {
				d.say("%s answered 200 with Hafe-Resumed: true, batch %s: it took the batch over (%.2fs after the kill)", e.FrontEnd, e.BatchID, time.Since(killTime).Seconds())
			} else {
				d.say("%s answered 200, batch %s: streaming one line per transaction", e.FrontEnd, e.BatchID)
			}
		case client.EventReplayed:
			d.say("%s replayed the %d lines already received, byte for byte identical to %s's (checked), not shown twice", e.FrontEnd, e.Replayed, killed)
		case client.EventRetry:
			var api *client.APIError
			var se *client.StreamError
			switch {
			case errors.As(e.Err, &api) && api.Status == 409:
				d.say("%s: 409 %s: %s's heartbeat is not yet 1s old, so it may still be running the batch; Retry-After %v, next try on %s",
					name[e.URL], api.Code, killed, api.RetryAfter, name[e.Next])
			case errors.As(e.Err, &se):
				d.say("the stream from %s broke after %d lines (%v); retrying with the same key and body on %s in %v", name[e.URL], se.Lines, se.Err, name[e.Next], e.Wait.Round(time.Millisecond))
			default:
				d.say("attempt %d on %s failed: %v; retrying on %s in %v", e.Attempt, name[e.URL], e.Err, name[e.Next], e.Wait.Round(time.Millisecond))
			}
		}
	}
	c, err := client.New(client.Config{FrontEnds: urls, MaxAttempts: 10, MinBackoff: 100 * time.Millisecond, MaxBackoff: 2 * time.Second, Observe: observe})
	if err != nil {
		return nil, err
	}
	firstAbort := true
	key := client.NewIdempotencyKey()
	res.sum.IdempotencyKey = key
	sum, err := c.Submit(ctx, client.Request{Body: body, IdempotencyKey: key, OnLine: func(l client.Line) error {
		if l.Done {
			d.say("summary line from %s: %s", l.FrontEnd, l.Bytes)
			return nil
		}
		res.status[l.Seq] = l.Status
		res.lines[l.Seq] = string(l.Bytes)
		if l.Seq == 1 {
			d.say("line 1 from %s: %s", l.FrontEnd, shorten(l.Bytes, 110))
		}
		if l.Status == "aborted" && firstAbort {
			firstAbort = false
			d.say("line %d from %s: %s", l.Seq, l.FrontEnd, shorten(l.Bytes, 110))
		}
		if l.Seq == killAt && killed == "" {
			victim := d.children[l.FrontEnd]
			if victim == nil {
				return fmt.Errorf("unknown front-end %q is serving", l.FrontEnd)
			}
			killed = l.FrontEnd
			d.say("%d of %d lines in: kill -9 %s (pid %d), the front-end serving this batch", l.Seq, n, l.FrontEnd, victim.cmd.Process.Pid)
			victim.kill()
			killTime = time.Now()
		}
		return nil
	}})
	res.sum = sum
	if err != nil {
		return res, fmt.Errorf("demo: submit: %w", err)
	}
	d.say("batch done in %.2fs: %d committed, %d aborted (insufficient funds); %d attempts, front-ends %s",
		time.Since(begin).Seconds(), sum.Committed, sum.Aborted, sum.Attempts, strings.Join(sum.FrontEnds, " -> "))
	if sum.Attempts == 1 {
		// The client lagged: fe1 had sent every line before it died. Ask
		// the others for the batch again; they must replay it identically.
		d.say("%s had sent all %d lines before the kill landed; asking the others for the batch again with the same key", killed, n)
		return res, d.resubmit(ctx, urls[1:], observe, body, key, killed, res)
	}
	return res, nil
}

// resubmit sends the finished batch again with its key to the front-ends
// still alive, and checks that their replay is the first stream, byte for
// byte.
func (d *demo) resubmit(ctx context.Context, urls []string, observe func(client.Event), body []byte, key, killed string, res *submitted) error {
	c, err := client.New(client.Config{FrontEnds: urls, MaxAttempts: 10, MinBackoff: 100 * time.Millisecond, MaxBackoff: 2 * time.Second, Observe: observe})
	if err != nil {
		return err
	}
	same := 0
	sum, err := c.Submit(ctx, client.Request{Body: body, IdempotencyKey: key, OnLine: func(l client.Line) error {
		if !l.Done && res.lines[l.Seq] == string(l.Bytes) {
			same++
		}
		return nil
	}})
	if err != nil {
		return fmt.Errorf("demo: submit again: %w", err)
	}
	if same != len(res.lines) || sum.Transactions != len(res.lines) || sum.Committed != res.sum.Committed {
		return fmt.Errorf("demo: the replay differs from %s's stream: %d of %d lines identical", killed, same, len(res.lines))
	}
	d.say("%s replayed all %d lines, byte for byte identical to %s's; nothing ran again", strings.Join(sum.FrontEnds, ", "), same, killed)
	res.sum.Attempts += sum.Attempts
	res.sum.FrontEnds = append(res.sum.FrontEnds, sum.FrontEnds...)
	return nil
}

func shorten(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return string(b[:n]) + "…"
}

// verify checks from the database that every transfer ran exactly once.
// sent is one batch the demo sent and what its client saw.
type sent struct {
	name  string // how the narration calls it
	batch []transfer
	res   *submitted
}

// verify checks from the database that every batch's transfers ran once
// each: per batch, one outcome per slot, the reported commits, the lines
// byte for byte; over all of them, the balances.
func (d *demo) verify(ctx context.Context, dbURL string, batches []sent) error {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return fmt.Errorf("demo: connect: %w", err)
	}
	defer conn.Close(context.Background())
	d.say("checking from the database:")
	failed := 0
	check := func(ok bool, format string, args ...any) {
		mark := "ok  "
		if !ok {
			mark = "FAIL"
			failed++
		}
		fmt.Fprintf(d.out, "          %s %s\n", mark, fmt.Sprintf(format, args...))
	}
	// Replaying the committed transfers once each must give exactly the
	// balances in the database: a transfer run twice, or a lost one,
	// would show. Transfers add up, so the order does not matter.
	want := map[int]int64{}
	for id := 1; id <= 100; id++ {
		want[id] = 100000
	}
	for _, b := range batches {
		if len(batches) > 1 {
			fmt.Fprintf(d.out, "          %s:\n", b.name)
		}
		dbStatus, err := d.verifyBatch(ctx, conn, check, b)
		if err != nil {
			return err
		}
		for i, t := range b.batch {
			if dbStatus[i+1] == "committed" {
				c := cents(t.Args.Amount)
				want[t.Args.From] -= c
				want[t.Args.To] += c
			}
		}
	}
	rows, err := conn.Query(ctx, `SELECT id, (balance * 100)::bigint FROM accounts`)
	if err != nil {
		return fmt.Errorf("demo: read balances: %w", err)
	}
	mismatched, accounts := 0, 0
	var total int64
	for rows.Next() {
		var id int
		var bal int64
		if err := rows.Scan(&id, &bal); err != nil {
			return fmt.Errorf("demo: read balances: %w", err)
		}
		accounts++
		total += bal
		if want[id] != bal {
			mismatched++
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("demo: read balances: %w", err)
	}
	check(mismatched == 0 && accounts == 100, "all 100 balances equal the committed transfers applied once each (%d differ)", mismatched)
	check(total == 10000000, "sum of balances: %d.%02d (was 100000.00)", total/100, total%100)
	if failed > 0 {
		return fmt.Errorf("demo: %d checks failed", failed)
	}
	var crashed []string
	for _, b := range batches {
		crashed = append(crashed, b.res.sum.FrontEnds[0])
	}
	d.say("every transfer ran once: the batches survived the crash of %s", strings.Join(crashed, " and "))
	return nil
}

// verifyBatch checks one batch's outcomes and returns each slot's status
// as the database recorded it.
func (d *demo) verifyBatch(ctx context.Context, conn *pgx.Conn, check func(bool, string, ...any), b sent) (map[int]string, error) {
	res := b.res
	rows, err := conn.Query(ctx, `SELECT seq, status, report FROM hafe.outcomes WHERE batch_id = $1`, res.sum.BatchID)
	if err != nil {
		return nil, fmt.Errorf("demo: read outcomes: %w", err)
	}
	outcomes := map[int]int{}
	dbStatus := map[int]string{}
	sameLines, committed := 0, 0
	for rows.Next() {
		var seq int
		var status, report string
		if err := rows.Scan(&seq, &status, &report); err != nil {
			return nil, fmt.Errorf("demo: read outcomes: %w", err)
		}
		outcomes[seq]++
		dbStatus[seq] = status
		if status == "committed" {
			committed++
		}
		if res.lines[seq] == report {
			sameLines++
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("demo: read outcomes: %w", err)
	}
	once := len(outcomes) == len(b.batch)
	for seq := 1; seq <= len(b.batch); seq++ {
		once = once && outcomes[seq] == 1
	}
	check(once, "every one of the %d slots has exactly one outcome", len(b.batch))
	check(committed == res.sum.Committed, "committed outcomes in the database: %d; reported to the client: %d", committed, res.sum.Committed)
	check(sameLines == len(b.batch), "the %d lines the client kept are the reports the database recorded, byte for byte", sameLines)
	var owners []string
	rows, err = conn.Query(ctx, `SELECT owner || ' wrote ' || count(*) FROM hafe.outcomes WHERE batch_id = $1 GROUP BY owner ORDER BY min(seq)`, res.sum.BatchID)
	if err == nil {
		owners, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	var epoch int64
	var owner string
	if err == nil {
		err = conn.QueryRow(ctx, `SELECT epoch, coalesce(owner, '-') FROM hafe.batches WHERE batch_id = $1`, res.sum.BatchID).Scan(&epoch, &owner)
	}
	if err != nil {
		return nil, fmt.Errorf("demo: read the batch: %w", err)
	}
	fmt.Fprintf(d.out, "          outcomes: %s; the batch's lease is at epoch %d (each takeover fences the previous owner)\n", strings.Join(owners, ", "), epoch)
	return dbStatus, nil
}

// cents reads "12.34" as 1234.
func cents(n json.Number) int64 {
	whole, frac, _ := strings.Cut(string(n), ".")
	w, _ := strconv.ParseInt(whole, 10, 64)
	f, _ := strconv.ParseInt((frac + "00")[:2], 10, 64)
	return w*100 + f
}
