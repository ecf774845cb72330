package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"hafe.dev/hafe/client"
	"hafe.dev/hafe/frontend"
	"hafe.dev/hafe/internal/pgtemp"
	"hafe.dev/hafe/internal/pgtemp/pgtest"
	hafesql "hafe.dev/hafe/sql"
)

// startBankFrontEnd runs a front-end in this process over a throwaway
// PostgreSQL with the demo bank, and returns its URL.
func startBankFrontEnd(t *testing.T, tokens ...string) string {
	t.Helper()
	var named []frontend.Token
	for i, secret := range tokens {
		named = append(named, frontend.Token{Name: fmt.Sprintf("client%d", i), Secret: secret})
	}
	return startBankFrontEndWith(t, frontend.Config{ID: "fe1", ClientTokens: named})
}

// startBankFrontEndWith is startBankFrontEnd with the front-end's config.
func startBankFrontEndWith(t *testing.T, cfg frontend.Config) string {
	t.Helper()
	requirePostgresBinaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pg, err := pgtemp.Start(ctx, pgtemp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })
	url := pgtest.Database(t, pg, "submit", hafesql.DemoSchema())
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	fe, err := frontend.New(pool, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(fe.Handler())
	t.Cleanup(func() { srv.Close(); pool.Close() })
	return srv.URL
}

type submitRun struct {
	code           int
	stdout, stderr string
}

func runSubmitBinary(t *testing.T, bin string, stdin string, args ...string) submitRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"submit"}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Env = slices.DeleteFunc(cmd.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "HAFE_") }) // no token or URL from the caller's environment
	err := cmd.Run()
	r := submitRun{stdout: out.String(), stderr: errOut.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatal(err)
	}
	return r
}

// ndjson checks that out is one JSON object per line and returns them.
func ndjson(t *testing.T, out string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("stdout line %q is not JSON: %v", l, err)
		}
		lines = append(lines, m)
	}
	return lines
}

func TestSubmitExitStatus(t *testing.T) {
	url := startBankFrontEnd(t)
	bin := buildHafe(t)
	sample, err := filepath.Abs("../../sql/demo/transfers.json")
	if err != nil {
		t.Fatal(err)
	}
	small := `{"transactions":[{"template":"transfer","args":{"from":1,"to":2,"amount":1.5}},{"template":"balance","args":{"id":2}}]}`
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()

	t.Run("all committed is 0, flags after the file", func(t *testing.T) {
		r := runSubmitBinary(t, bin, small, "-", "--to", url)
		if r.code != 0 {
			t.Fatalf("exit %d, stderr %s", r.code, r.stderr)
		}
		lines := ndjson(t, r.stdout)
		if len(lines) != 3 || lines[0]["seq"] != 1.0 || lines[2]["done"] != true {
			t.Errorf("stdout %s: want seq 1, 2 and the summary", r.stdout)
		}
		if !strings.Contains(r.stderr, "done: 2/2 transactions: 2 committed, 0 aborted; attempts 1") {
			t.Errorf("stderr lacks the summary: %s", r.stderr)
		}
	})
	t.Run("some aborted is 1", func(t *testing.T) {
		r := runSubmitBinary(t, bin, "", "--to", url, sample)
		t.Logf("stderr:\n%s", r.stderr)
		if r.code != 1 {
			t.Fatalf("exit %d, stderr %s", r.code, r.stderr)
		}
		lines := ndjson(t, r.stdout)
		if len(lines) != 21 || lines[9]["status"] != "aborted" || lines[20]["aborted"] != 1.0 {
			t.Errorf("stdout %s: want 20 lines with seq 10 aborted, then the summary", r.stdout)
		}
	})
	t.Run("quiet writes nothing on stderr", func(t *testing.T) {
		r := runSubmitBinary(t, bin, small, "--quiet", "--to", url, "-")
		if r.code != 0 || r.stderr != "" {
			t.Errorf("exit %d, stderr %q: want 0 and nothing", r.code, r.stderr)
		}
	})
	t.Run("refusal is 3 with the server's code", func(t *testing.T) {
		r := runSubmitBinary(t, bin, `{"transactions":[{"template":"nope","args":{}}]}`, "-", "--to", url)
		if r.code != 3 || !strings.Contains(r.stderr, "unknown_template") || r.stdout != "" || strings.Contains(r.stderr, "resume") {
			t.Errorf("exit %d, stdout %q, stderr %s: want 3 and unknown_template", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("key reused with another body is 3", func(t *testing.T) {
		if r := runSubmitBinary(t, bin, small, "-", "--to", url, "--idempotency-key", "k-reused"); r.code != 0 {
			t.Fatalf("first submit: exit %d, %s", r.code, r.stderr)
		}
		r := runSubmitBinary(t, bin, "", sample, "--to", url, "--idempotency-key", "k-reused")
		if r.code != 3 || !strings.Contains(r.stderr, "idempotency_key_reused") {
			t.Errorf("exit %d, stderr %s: want 3 and idempotency_key_reused", r.code, r.stderr)
		}
	})
	t.Run("same key again replays the finished batch", func(t *testing.T) {
		a := runSubmitBinary(t, bin, small, "-", "--to", url, "--idempotency-key", "k-again")
		b := runSubmitBinary(t, bin, small, "-", "--to", url, "--idempotency-key", "k-again")
		if a.code != 0 || b.code != 0 || a.stdout != b.stdout {
			t.Errorf("exits %d, %d; stdouts\n%s\n%s\nwant 0 and identical bytes", a.code, b.code, a.stdout, b.stdout)
		}
	})
	t.Run("unreachable front-ends is 4 and says how to resume", func(t *testing.T) {
		r := runSubmitBinary(t, bin, small, "-", "--to", dead, "--max-attempts", "2")
		if r.code != 4 || !strings.Contains(r.stderr, "resume with: hafe submit - --to "+dead+" --idempotency-key hafe-") {
			t.Errorf("exit %d, stderr %s", r.code, r.stderr)
		}
	})
	t.Run("usage errors are 2 with a one-line hint", func(t *testing.T) {
		for _, args := range [][]string{{sample}, {"--to", url}, {"--to", url, "/no/such/file.json"}, {"--to", url, "--bogus", sample}} {
			r := runSubmitBinary(t, bin, "", args...)
			if r.code != 2 || !strings.HasSuffix(r.stderr, "Run 'hafe submit --help' for usage.\n") || strings.Count(r.stderr, "\n") != 2 {
				t.Errorf("hafe submit %v: exit %d, stderr %q; want 2, the error and the hint", args, r.code, r.stderr)
			}
		}
	})
}

func TestSubmitSendsToken(t *testing.T) {
	url := startBankFrontEnd(t, "s3cret")
	bin := buildHafe(t)
	small := `{"transactions":[{"template":"balance","args":{"id":1}}]}`
	if r := runSubmitBinary(t, bin, small, "-", "--to", url); r.code != 3 || !strings.Contains(r.stderr, "401 unauthorized") {
		t.Errorf("without token: exit %d, stderr %s", r.code, r.stderr)
	}
	if r := runSubmitBinary(t, bin, small, "-", "--to", url, "--token", "s3cret"); r.code != 0 {
		t.Errorf("with token: exit %d, stderr %s", r.code, r.stderr)
	}
}

func TestParseInterspersedKeepsFlagsAnywhere(t *testing.T) {
	for _, args := range [][]string{
		{"f.json", "--to", "a,b", "--quiet"},
		{"--to=a", "f.json", "--quiet", "--to", "b"},
		{"--quiet", "--to", "a", "--to", "b", "--", "f.json"},
	} {
		fs := newFlagSet("submit", "", "", &bytes.Buffer{})
		var to stringList
		fs.Var(&to, "to", "")
		quiet := fs.Bool("quiet", false, "")
		rest, err := parseInterspersed(fs, args)
		if err != nil || len(rest) != 1 || rest[0] != "f.json" || strings.Join(to, ",") != "a,b" || !*quiet {
			t.Errorf("%v: rest %v, to %v, quiet %v, err %v", args, rest, to, *quiet, err)
		}
	}
}

// TestRetryMessagesSayWhatHappensToTheBatch: each kind of failed attempt
// is explained in the terms of a takeover, not as a bare error.
func TestRetryMessagesSayWhatHappensToTheBatch(t *testing.T) {
	base := client.Event{Kind: client.EventRetry, Attempt: 2, URL: "http://fe1", Next: "http://fe2", Wait: 1500 * time.Millisecond}
	for _, tt := range []struct {
		err  error
		want []string
	}{
		{&client.APIError{Status: 409, Code: "batch_in_progress", Message: "still running on front-end fe0"}, []string{"still owned", "missed its heartbeats", "retrying on http://fe2 in 1.5s", "same key"}},
		{&client.APIError{Status: 401, Code: "unauthorized"}, []string{"refused the token", "other front-ends"}},
		{&client.StreamError{URL: "http://fe1", NoResponse: true, Err: errors.New("connection refused")}, []string{"did not answer", "connection refused", "resumes the batch"}},
		{&client.StreamError{URL: "http://fe1", Lines: 17, Err: errors.New("unexpected EOF")}, []string{"broke after 17 lines", "runs the rest"}},
		{&client.APIError{Status: 503, Code: "draining"}, []string{"attempt 2 failed", "draining", "retrying on http://fe2"}},
	} {
		e := base
		e.Err = tt.err
		got := retryMessage(e)
		for _, w := range tt.want {
			if !strings.Contains(got, w) {
				t.Errorf("%v: %q lacks %q", tt.err, got, w)
			}
		}
	}
}
