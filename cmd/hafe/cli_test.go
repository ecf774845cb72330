package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"hafe.dev/hafe/internal/buildinfo"
)

func TestLogFormats(t *testing.T) {
	for _, c := range []struct {
		format string
		check  func(string) bool
	}{
		{"text", func(s string) bool { return strings.Contains(s, "msg=hello") && strings.Contains(s, "request_id=r1") }},
		{"json", func(s string) bool {
			var m map[string]any
			return json.Unmarshal([]byte(s), &m) == nil && m["msg"] == "hello" && m["request_id"] == "r1"
		}},
	} {
		var buf bytes.Buffer
		log, err := newLogger(&buf, "info", c.format)
		if err != nil {
			t.Fatal(err)
		}
		log.Info("hello", "request_id", "r1")
		log.Debug("not at info")
		if !c.check(buf.String()) || strings.Contains(buf.String(), "not at info") {
			t.Errorf("--log-format %s wrote %q", c.format, buf.String())
		}
	}
	if _, err := newLogger(&bytes.Buffer{}, "info", "xml"); err == nil || !strings.Contains(err.Error(), "--log-format") {
		t.Errorf("--log-format xml: %v", err)
	}
	if _, err := newLogger(&bytes.Buffer{}, "loud", "text"); err == nil || !strings.Contains(err.Error(), "--log-level") {
		t.Errorf("--log-level loud: %v", err)
	}
}

func TestVersionLine(t *testing.T) {
	for _, c := range []struct {
		in   buildinfo.Info
		want string
	}{
		{buildinfo.Info{Version: "(devel)", Go: "go1.26.8"}, "hafe (devel) (go1.26.8)"},
		{buildinfo.Info{Version: "v1.2.0", Revision: "0123456789abcdef", Time: "2026-10-27T10:00:00Z", Go: "go1.26.8"},
			"hafe v1.2.0 (revision 0123456789ab of 2026-10-27T10:00:00Z, go1.26.8)"},
		{buildinfo.Info{Version: "(devel)", Revision: "0123456789abcdef", Modified: true, Go: "go1.26.8"},
			"hafe (devel) (revision 0123456789ab+dirty, go1.26.8)"},
	} {
		if got := versionLine(c.in); got != c.want {
			t.Errorf("%+v: %q, want %q", c.in, got, c.want)
		}
	}
}

// A wrong flag costs two lines on standard error, not the whole usage;
// --help shows every flag with two dashes and exits 0.
func TestWrongFlagPrintsTheErrorAndAHint(t *testing.T) {
	bin := buildHafe(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--bogus"}, "hafe serve: flag provided but not defined: --bogus\nRun 'hafe serve --help' for usage.\n"},
		{[]string{"serve", "--pool-size", "many"}, "hafe serve: invalid value \"many\" for flag --pool-size: parse error\nRun 'hafe serve --help' for usage.\n"},
		{[]string{"db", "install", "--db"}, "hafe db install: flag needs an argument: --db\nRun 'hafe db install --help' for usage.\n"},
		{[]string{"batches", "rm"}, "hafe batches: unknown subcommand \"rm\" (want ls or show)\nRun 'hafe batches --help' for usage.\n"},
		{[]string{"version", "x"}, "hafe version: version takes no arguments, got [\"x\"]\nRun 'hafe version --help' for usage.\n"},
		{[]string{"drain"}, "hafe drain: give the front-end's URL, e.g. http://10.0.0.7:8080\nRun 'hafe drain --help' for usage.\n"},
		{[]string{"drain", "127.0.0.1:1", "--wait", "11m"}, "hafe drain: --wait 11m0s: want 0s to 10m\nRun 'hafe drain --help' for usage.\n"},
		{[]string{"serve", "--db", "postgres://x/y", "--mtcp-listen", "127.0.0.1:0"}, "hafe serve: --mtcp-listen needs --cluster-key-file: the front-ends authenticate each other with it when they hand connections over\nRun 'hafe serve --help' for usage.\n"},
		{[]string{"serve", "--db", "postgres://x/y", "--mtcp-listen", ":9090", "--cluster-key-file", "/dev/null"}, "hafe serve: --mtcp-listen :9090 listens on every interface: give --mtcp-advertise HOST:PORT, the address clients and the other front-ends reach it at\nRun 'hafe serve --help' for usage.\n"},
		{[]string{"serve", "--db", "postgres://x/y", "--mtcp-listen", "127.0.0.1:0", "--cluster-key-file", "/dev/null"}, "hafe serve: --cluster-key-file /dev/null holds 0 bytes; use at least 16 random ones, e.g. head -c 32 /dev/urandom | base64 > /dev/null\nRun 'hafe serve --help' for usage.\n"},
		{[]string{"serve", "--db", "postgres://x/y", "--mtcp-listen", "127.0.0.1:0", "--cluster-key-file", "/dev/null", "--mtcp-mode", "fast"}, "hafe serve: --mtcp-mode \"fast\": want eager or lazy\nRun 'hafe serve --help' for usage.\n"},
	} {
		var stderr bytes.Buffer
		cmd := exec.Command(bin, c.args...)
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || stderr.String() != c.want {
			t.Errorf("hafe %v: %v, stderr %q; want exit 2 and %q", c.args, err, stderr.String(), c.want)
		}
	}
	out, err := exec.Command(bin, "serve", "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "\n  --pool-size int\n") || strings.Contains(string(out), "\n  -pool-size") {
		t.Errorf("serve --help: %v\n%s", err, out)
	}
	out, err = exec.Command(bin, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "hafe ") || !strings.Contains(string(out), runtime.Version()) {
		t.Errorf("version: %v %q", err, out)
	}
}
