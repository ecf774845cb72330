package failbench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/internal/pgtemp"
	"hafe.dev/hafe/mtcp"
	hafesql "hafe.dev/hafe/sql"
)

// ClusterOptions say how the front-end processes run.
type ClusterOptions struct {
	// Binary is the hafe executable started as "hafe serve".
	Binary string
	// DB is a scratch database; "" starts a throwaway PostgreSQL.
	DB string
	// FrontEnds is how many front-ends run (default 3).
	FrontEnds int
	// Heartbeat and OwnerLiveness are passed to every front-end.
	Heartbeat, OwnerLiveness time.Duration
	// DrainTimeout is hafe serve's --drain-timeout.
	DrainTimeout time.Duration
	// Extra flags for every hafe serve.
	Extra []string
	// Log receives progress lines; nil: none.
	Log io.Writer
	// Lazy runs the front-ends with --mtcp-mode lazy (default eager).
	Lazy bool
	// KeepLogs leaves the front-ends' logs behind (the directory is
	// printed to Log).
	KeepLogs bool
}

// cluster is a PostgreSQL and front-end processes over MTCP (eager) and
// plain HTTP, each on fixed ports so that a restart comes back at the same
// addresses.
type cluster struct {
	o    ClusterOptions
	dir  string
	db   string
	key  string
	pg   *pgtemp.Server
	fes  []*frontEnd
	logw io.Writer
}

type frontEnd struct {
	id       string
	httpAddr string
	mtcpAddr string
	logPath  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func startCluster(ctx context.Context, o ClusterOptions) (_ *cluster, err error) {
	if o.FrontEnds <= 0 {
		o.FrontEnds = 3
	}
	if o.Binary == "" {
		return nil, errors.New("failbench: no hafe binary")
	}
	c := &cluster{o: o, logw: o.Log}
	if c.logw == nil {
		c.logw = io.Discard
	}
	if c.dir, err = os.MkdirTemp("", "hafe-failbench-"); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			c.stop()
		}
	}()
	c.db = o.DB
	if c.db == "" {
		fmt.Fprintln(c.logw, "starting a throwaway PostgreSQL…")
		if c.pg, err = pgtemp.Start(ctx, pgtemp.Options{}); err != nil {
			return nil, err
		}
		if c.db, err = c.pg.NewDatabase(ctx, "failbench"); err != nil {
			return nil, err
		}
	}
	if err := prepareDB(ctx, c.db); err != nil {
		return nil, err
	}
	c.key = filepath.Join(c.dir, "cluster.key")
	if err := os.WriteFile(c.key, []byte(strings.Repeat("failbench-key-", 3)), 0o600); err != nil {
		return nil, err
	}
	for i := range o.FrontEnds {
		hp, err := freePort()
		if err != nil {
			return nil, err
		}
		mp, err := freePort()
		if err != nil {
			return nil, err
		}
		id := fmt.Sprintf("fe%d", i+1)
		c.fes = append(c.fes, &frontEnd{id: id, httpAddr: hp, mtcpAddr: mp, logPath: filepath.Join(c.dir, id+".log")})
	}
	for _, fe := range c.fes {
		if err := c.start(fe); err != nil {
			return nil, err
		}
	}
	for _, fe := range c.fes {
		if err := c.waitReady(ctx, fe); err != nil {
			return nil, err
		}
	}
	if err := c.waitMesh(ctx); err != nil {
		return nil, err
	}
	fmt.Fprintf(c.logw, "%d front-ends ready (logs in %s)\n", len(c.fes), c.dir)
	return c, nil
}

// prepareDB installs hafe and the demo bank.
func prepareDB(ctx context.Context, url string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := backendext.Install(ctx, conn, backendext.InstallOptions{}, nil); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, hafesql.DemoSchema()); err != nil {
		return fmt.Errorf("demo schema: %w", err)
	}
	return nil
}

func (c *cluster) start(fe *frontEnd) error {
	args := []string{"serve", "--db", c.db, "--listen", fe.httpAddr, "--id", fe.id, "--allow-superuser",
		"--heartbeat", c.o.Heartbeat.String(), "--owner-liveness", c.o.OwnerLiveness.String(),
		"--mtcp-listen", fe.mtcpAddr, "--cluster-key-file", c.key, "--mtcp-mode", c.mode(),
		"--log-format", "json"}
	if c.o.DrainTimeout > 0 {
		args = append(args, "--drain-timeout", c.o.DrainTimeout.String())
	}
	args = append(args, c.o.Extra...)
	logFile, err := os.OpenFile(fe.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(c.o.Binary, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HAFE_") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start %s: %w", fe.id, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logFile.Close(); close(done) }()
	fe.mu.Lock()
	fe.cmd, fe.done = cmd, done
	fe.mu.Unlock()
	return nil
}

func (fe *frontEnd) proc() (*exec.Cmd, chan struct{}) {
	fe.mu.Lock()
	defer fe.mu.Unlock()
	return fe.cmd, fe.done
}

// kill sends SIGKILL and returns when it was sent; exited closes once
// the process is gone.
func (fe *frontEnd) kill() (exited <-chan struct{}) {
	cmd, done := fe.proc()
	cmd.Process.Kill()
	return done
}

func (fe *frontEnd) terminate() (exited <-chan struct{}) {
	cmd, done := fe.proc()
	cmd.Process.Signal(syscall.SIGTERM)
	return done
}

func (fe *frontEnd) exited() bool {
	_, done := fe.proc()
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// logSize is where the next log line of fe will start.
func (fe *frontEnd) logSize() int64 {
	st, err := os.Stat(fe.logPath)
	if err != nil {
		return 0
	}
	return st.Size()
}

// restart starts fe again once its process is gone and waits until it is
// ready.
func (c *cluster) restart(ctx context.Context, fe *frontEnd) error {
	_, done := fe.proc()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s did not exit", fe.id)
	}
	if err := c.start(fe); err != nil {
		return err
	}
	if err := c.waitReady(ctx, fe); err != nil {
		return err
	}
	return c.waitMesh(ctx)
}

// waitMesh waits until every front-end gives its MTCP clients the whole
// server list: until then a drain has nowhere to send connections, and a
// client learns of no other front-end to move to.
func (c *cluster) waitMesh(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	for _, fe := range c.fes {
		for {
			d := &mtcp.Dialer{HandshakeTimeout: time.Second}
			conn, err := d.DialMTCP(ctx, fe.mtcpAddr)
			n := 0
			if err == nil {
				n = len(conn.Servers())
				conn.Close()
			}
			if n >= len(c.fes) {
				break
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("front-end %s lists %d MTCP servers of %d after 30s (%v)", fe.id, n, len(c.fes), err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

func (c *cluster) waitReady(ctx context.Context, fe *frontEnd) error {
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+fe.httpAddr+"/readyz", nil)
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				hc.CloseIdleConnections()
				return nil
			}
		}
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case fe.exited():
			return fmt.Errorf("front-end %s exited at start: %s", fe.id, tail(fe.logPath, 5))
		case time.Now().After(deadline):
			return fmt.Errorf("front-end %s not ready after 30s: %s", fe.id, tail(fe.logPath, 5))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *cluster) byID(id string) *frontEnd {
	for _, fe := range c.fes {
		if fe.id == id {
			return fe
		}
	}
	return nil
}

func (c *cluster) httpURLs(first int) []string {
	var out []string
	for i := range c.fes {
		out = append(out, "http://"+c.fes[(first+i)%len(c.fes)].httpAddr)
	}
	return out
}

func (c *cluster) mtcpAddrs(first int) []string {
	var out []string
	for i := range c.fes {
		out = append(out, c.fes[(first+i)%len(c.fes)].mtcpAddr)
	}
	return out
}

// stop ends every front-end (SIGTERM, then SIGKILL) and PostgreSQL.
func (c *cluster) stop() {
	var wg sync.WaitGroup
	for _, fe := range c.fes {
		cmd, done := fe.proc()
		if cmd == nil {
			continue
		}
		wg.Go(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				cmd.Process.Kill()
				<-done
			}
		})
	}
	wg.Wait()
	if c.pg != nil {
		c.pg.Stop()
	}
	if c.dir != "" && !c.o.KeepLogs {
		os.RemoveAll(c.dir)
	} else if c.dir != "" {
		fmt.Fprintf(c.logw, "front-end logs kept in %s\n", c.dir)
	}
}

func (c *cluster) mode() string {
	if c.o.Lazy {
		return "lazy"
	}
	return "eager"
}

// logLine is one JSON log line of a front-end.
type logLine struct {
	Time time.Time      `json:"time"`
	Msg  string         `json:"msg"`
	Attr map[string]any `json:"-"`
}

// readLog returns fe's JSON log lines from byte offset from on.
func (fe *frontEnd) readLog(from int64) []logLine {
	f, err := os.Open(fe.logPath)
	if err != nil {
		return nil
	}
	defer f.Close()
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return nil
	}
	var out []logLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var l logLine
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		json.Unmarshal(sc.Bytes(), &l.Attr)
		out = append(out, l)
	}
	return out
}

func (l logLine) str(k string) string {
	s, _ := l.Attr[k].(string)
	return s
}

func (l logLine) micros(k string) time.Duration {
	f, _ := l.Attr[k].(float64)
	return time.Duration(f) * time.Microsecond
}

// duration reads a slog duration: nanoseconds in JSON.
func (l logLine) duration(k string) time.Duration {
	switch v := l.Attr[k].(type) {
	case float64:
		return time.Duration(v)
	case string:
		d, _ := time.ParseDuration(v)
		return d
	}
	return 0
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(l.Addr().(*net.TCPAddr).Port)), nil
}
