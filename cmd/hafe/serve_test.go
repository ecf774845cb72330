package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/frontend"
	"hafe.dev/hafe/internal/pgtemp"
)

var (
	serveBinOnce sync.Once
	serveBin     string
	serveBinErr  error
)

// buildServeBinary builds the hafe binary once per test process.
func buildServeBinary(t *testing.T) string {
	t.Helper()
	serveBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "hafe-bin-")
		if err != nil {
			serveBinErr = err
			return
		}
		serveBin = filepath.Join(dir, "hafe")
		out, err := exec.Command("go", "build", "-o", serveBin, ".").CombinedOutput()
		if err != nil {
			serveBinErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if serveBinErr != nil {
		t.Fatal(serveBinErr)
	}
	return serveBin
}

func pickServeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// servedProcess is a "hafe serve" process on a throwaway PostgreSQL.
type servedProcess struct {
	url    string // the database
	addr   string // the HTTP listener
	cmd    *exec.Cmd
	logs   *bytes.Buffer
	exited chan error
}

// startServe starts "hafe serve --db … --listen … args…" and waits until it
// is ready; everything is stopped when the test ends.
func startServe(t *testing.T, args ...string) *servedProcess {
	t.Helper()
	bin := buildServeBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pg, err := pgtemp.Start(ctx, pgtemp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })
	url, err := pg.NewDatabase(ctx, "serve")
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(args, "--allow-raw-sql") {
		// Raw SQL logs in as the client role, which has a password, as an
		// operator would set it up (--install then grants it what it needs).
		admin, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		_, err = admin.Exec(ctx, "CREATE ROLE hafe_client LOGIN PASSWORD 'client-secret'")
		admin.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
		args = append(args, "--raw-sql-db", strings.Replace(url, "postgres://postgres@", "postgres://hafe_client:client-secret@", 1))
	}
	if slices.Contains(args, "--install") {
		// As a plain schema first: the server's extension directory is
		// shared, and may hold another build's scripts.
		admin, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		_, err = backendext.Install(ctx, admin, backendext.InstallOptions{ForceSchema: true}, nil)
		admin.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
	}
	p := &servedProcess{url: url, addr: pickServeAddr(t), logs: &bytes.Buffer{}, exited: make(chan error, 1)}
	// The throwaway server has only its superuser.
	p.cmd = exec.Command(bin, append([]string{"serve", "--db", url, "--listen", p.addr, "--allow-superuser"}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() { p.cmd.Process.Kill() })
	waitServeReady(t, "http://"+p.addr)
	return p
}

func TestServeFinishesRunningBatchOnSIGTERMThenLeaves(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := startServe(t, "--id", "fe-term", "--install", "--allow-raw-sql", "--drain-timeout", "1m")
	addr, cmd, exited, logs, url := p.addr, p.cmd, p.exited, p.logs, p.url
	body := `{"transactions":[` + strings.TrimSuffix(strings.Repeat(`{"sql":[{"query":"SELECT pg_sleep(0.1)"}]},`, 8), ",") + `]}`
	resp, err := http.Post("http://"+addr+"/v1/batches", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := bufio.NewScanner(resp.Body)
	if !lines.Scan() {
		t.Fatalf("no first line: %v", lines.Err())
	}
	cmd.Process.Signal(syscall.SIGTERM)
	// New batches are refused while the running one finishes.
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := http.Post("http://"+addr+"/v1/batches", "application/json", strings.NewReader(body))
		if err != nil {
			break // listener already closed: also a refusal
		}
		r.Body.Close()
		if r.StatusCode == http.StatusServiceUnavailable {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a new batch got %d while draining", r.StatusCode)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var last string
	n := 1
	for lines.Scan() {
		last = lines.Text()
		n++
	}
	if n != 9 || !strings.HasPrefix(last, `{"done":true`) {
		t.Fatalf("got %d lines, last %q; want 8 reports and the done line", n, last)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("hafe serve exited with %v\n%s", err, logs.String())
		}
	case <-ctx.Done():
		t.Fatal("hafe serve did not exit after draining")
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	ms, err := backendext.ListMembers(ctx, conn, time.Hour)
	if err != nil || len(ms) != 0 {
		t.Fatalf("members after exit: %+v (err %v)", ms, err)
	}
}

func TestServeWithoutDatabaseExplains(t *testing.T) {
	bin := buildServeBinary(t)
	out, err := exec.Command(bin, "serve").CombinedOutput()
	if code := serveExitCode(err); code != 2 || !strings.Contains(string(out), "--db is required") {
		t.Fatalf("exit %d, output:\n%s", code, out)
	}
	out, err = exec.Command(bin, "serve", "--db", "postgres://nobody@127.0.0.1:1/x", "--listen", "127.0.0.1:0", "--max-attempts", "many").CombinedOutput()
	if code := serveExitCode(err); code != 2 || !strings.Contains(string(out), "invalid value") {
		t.Fatalf("bad flag: exit %d, output:\n%s", code, out)
	}
}

func serveExitCode(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func waitServeReady(t *testing.T, base string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		r, err := http.Get(base + "/readyz")
		if err == nil {
			r.Body.Close()
			if r.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s never became ready", base)
}

func TestServeTellsClientsWhenTheDrainTimeoutInterruptsThem(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := startServe(t, "--id", "fe-drain", "--install", "--allow-raw-sql", "--drain-timeout", "300ms")
	addr, cmd, exited, logs := p.addr, p.cmd, p.exited, p.logs
	body := `{"transactions":[` + strings.TrimSuffix(strings.Repeat(`{"sql":[{"query":"SELECT pg_sleep(0.2)"}]},`, 20), ",") + `]}`
	req, _ := http.NewRequest("POST", "http://"+addr+"/v1/batches", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", "drain-timeout")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := bufio.NewScanner(resp.Body)
	if !lines.Scan() {
		t.Fatalf("no first line: %v", lines.Err())
	}
	cmd.Process.Signal(syscall.SIGTERM)
	var last string
	for lines.Scan() {
		last = lines.Text()
	}
	if !strings.Contains(last, `"code":"interrupted"`) {
		t.Fatalf("last line %q; want the interrupted line telling the client to resume\n%s", last, logs.String())
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("hafe serve exited with %v\n%s", err, logs.String())
		}
	case <-ctx.Done():
		t.Fatal("hafe serve did not exit")
	}
}

// TestServeHelpSaysWhenTheAPIIsOpen: without --token any web page the
// user's browser visits can post batches, so the help says what that is
// fit for, and that bodies must be JSON (issue 8.12).
func TestServeHelpSaysWhenTheAPIIsOpen(t *testing.T) {
	var stdout, stderr bytes.Buffer
	run(context.Background(), []string{"serve", "--help"}, &stdout, &stderr)
	help := stderr.String()
	for _, want := range []string{"loopback only", "application/json", "NAME=SECRET"} {
		if !strings.Contains(help, want) {
			t.Errorf("serve --help does not say %q:\n%s", want, help)
		}
	}
}

// TestTokensAreNamed: --token takes NAME=SECRET, several times or
// comma-separated; a token without a name, an empty secret or one secret
// under two names is refused.
func TestTokensAreNamed(t *testing.T) {
	var tl tokenList
	for _, v := range []string{"shop=s1", "shop=s2,billing=b=64=="} {
		if err := tl.Set(v); err != nil {
			t.Fatal(err)
		}
	}
	want := []frontend.Token{{Name: "shop", Secret: "s1"}, {Name: "shop", Secret: "s2"}, {Name: "billing", Secret: "b=64=="}}
	if !slices.Equal(tl, want) {
		t.Fatalf("tokens %+v, want %+v", tl, want)
	}
	for _, bad := range []string{"s3cret", "=secret", "shop=", "sh op=x", "other=s1"} {
		if err := tl.Set(bad); err == nil {
			t.Errorf("--token %q was accepted", bad)
		}
	}
}
