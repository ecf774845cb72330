package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"hafe.dev/hafe/internal/pgtemp"
)

// binDir holds the hafe binary the tests build once; TestMain removes it.
var (
	binDir   string
	binOnce  sync.Once
	binPath  string
	binError error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hafe-cmd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildHafe builds the hafe binary (once per test run): the demo starts its
// front-ends from its own executable, which must be hafe, and exit statuses
// are best checked on the real process.
func buildHafe(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binPath = filepath.Join(binDir, "hafe")
		if out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput(); err != nil {
			binError = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if binError != nil {
		t.Fatal(binError)
	}
	return binPath
}

func requirePostgresBinaries(t *testing.T) {
	if _, err := pgtemp.FindBinDir(); err != nil {
		t.Skip(err)
	}
}

var childPID = regexp.MustCompile(`started (?:front-end fe\d|hafe agent): pid (\d+)`)

// checkChildrenGone fails if a front-end or agent the demo started still
// runs. The demo starts three front-ends, restarts the two it killed or
// drained before the agent's batch (whose front-end it kills too) and, with
// --stay, that one again.
func checkChildrenGone(t *testing.T, output string) {
	t.Helper()
	ms := childPID.FindAllStringSubmatch(output, -1)
	if len(ms) < 3 || len(ms) > 7 {
		t.Errorf("output names %d front-end and agent pids, want 3 to 7", len(ms))
	}
	for _, m := range ms {
		pid, _ := strconv.Atoi(m[1])
		// The demo waited for its children, so the pid is not a zombie of
		// ours; signal 0 fails once the process is gone.
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("front-end pid %d still runs after the demo", pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func TestDemoSurvivesKilledFrontEndAndVerifies(t *testing.T) {
	requirePostgresBinaries(t)
	bin := buildHafe(t)
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{nil, []string{ // over MTCP: the connection moves, one request
			"kill -9 fe1",
			"the connection moved fe1 -> ",
			"after the kill, from fe",
			"on the same connection and response: no new request",
			"SIGTERM to fe",
			"drained and exited",
			"1 request",
			// then curl through hafe agent
			"started hafe agent: pid",
			"sending 300 more transfers with plain curl through the agent",
			"kill -9 fe2",
			"on the same curl connection and response",
			"one curl request, one TCP connection",
			"the agent moved the connection fe2 -> ",
			"curl's batch through hafe agent:",
		}},
		{[]string{"--http"}, []string{ // plain HTTP: resumed by key
			"kill -9 fe1",
			"Hafe-Resumed: true",
			"replayed the ",
		}},
	} {
		t.Run(strings.Join(append([]string{"demo"}, tt.args...), " "), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, append([]string{"demo", "--postgres", "local"}, tt.args...)...)
			out, err := cmd.CombinedOutput()
			text := string(out)
			t.Logf("demo output:\n%s", text)
			if err != nil {
				t.Fatalf("hafe demo: %v", err)
			}
			for _, want := range append(tt.want,
				"ok   every one of the 300 slots has exactly one outcome",
				"ok   committed outcomes in the database",
				"ok   all 100 balances equal the committed transfers applied once each",
				"ok   sum of balances: 100000.00",
				"every transfer ran once",
				"front-ends stopped",
				"PostgreSQL stopped and its directory removed",
			) {
				if !strings.Contains(text, want) {
					t.Errorf("output lacks %q", want)
				}
			}
			if strings.Contains(text, "FAIL") {
				t.Error("a check failed")
			}
			// The drained front-end sends lines until the client has
			// moved: on a fast machine the batch's last third can end
			// there first, and the demo says so.
			if tt.args == nil && !strings.Contains(text, "the front-end asked it to move") &&
				!strings.Contains(text, "sent the rest of the batch before its drain had moved the connection") {
				t.Error("output tells neither of a move for the drain nor of the batch ending first")
			}
			checkChildrenGone(t, text)
		})
	}
}

// Killed at the very last line, the front-end may or may not have finished
// the batch; either way the demo must end with every check holding.
func TestDemoKilledAtTheLastLine(t *testing.T) {
	requirePostgresBinaries(t)
	bin := buildHafe(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "demo", "--postgres", "local", "--transactions", "30", "--kill-at", "30").CombinedOutput()
	text := string(out)
	t.Logf("demo output:\n%s", text)
	if err != nil || !strings.Contains(text, "every transfer ran once") || strings.Contains(text, "FAIL") {
		t.Fatalf("hafe demo: %v", err)
	}
	checkChildrenGone(t, text)
}

// Without local server binaries the demo runs PostgreSQL in a container;
// --postgres container takes that path here too.
func TestDemoWithPostgresContainer(t *testing.T) {
	if testing.Short() {
		t.Skip("containers are skipped under -short")
	}
	image := os.Getenv("HAFE_PG_IMAGE")
	if image == "" {
		image = "hafe-postgres:15"
	}
	if err := exec.Command("docker", "image", "inspect", image).Run(); err != nil {
		t.Skipf("no Docker image %s (make image-postgres builds it): %v", image, err)
	}
	bin := buildHafe(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "demo", "--postgres", "container").CombinedOutput()
	text := string(out)
	t.Logf("demo output:\n%s", text)
	if err != nil || !strings.Contains(text, "every transfer ran once") || !strings.Contains(text, "PostgreSQL container removed") {
		t.Fatalf("hafe demo: %v", err)
	}
	checkChildrenGone(t, text)
}

func TestDemoCleansUpOnInterrupt(t *testing.T) {
	requirePostgresBinaries(t)
	bin := buildHafe(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "demo", "--postgres", "local")
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	var text strings.Builder
	sc := bufio.NewScanner(pr)
	interrupted := false
	for sc.Scan() {
		line := sc.Text()
		text.WriteString(line + "\n")
		if !interrupted && strings.Contains(line, "front-ends ready") {
			interrupted = true
			cmd.Process.Signal(os.Interrupt)
		}
	}
	err = cmd.Wait()
	t.Logf("demo output:\n%s", text.String())
	var ee *exec.ExitError
	if !interrupted || !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("interrupted %v, exit %v: want exit status 2 after an interrupt", interrupted, err)
	}
	for _, want := range []string{"front-ends stopped", "PostgreSQL stopped and its directory removed", "interrupted; everything started was stopped and removed"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	checkChildrenGone(t, text.String())
}

// TestDemoStaysUpUntilInterrupted: with --stay the cluster outlives the
// checks, all three front-ends (the killed one restarted) serve what the
// printed lines say, and Ctrl-C stops everything with exit status 0.
func TestDemoStaysUpUntilInterrupted(t *testing.T) {
	requirePostgresBinaries(t)
	bin := buildHafe(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "demo", "--postgres", "local", "--transactions", "30", "--stay")
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	var text strings.Builder
	sc := bufio.NewScanner(pr)
	var dashboard, metrics, curl string
	for sc.Scan() {
		line := sc.Text()
		text.WriteString(line + "\n")
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && f[0] == "dashboard":
			dashboard = f[1]
		case len(f) >= 2 && f[0] == "metrics":
			metrics = f[1]
		case len(f) > 0 && f[0] == "curl" && dashboard != "": // the agent's curl line comes earlier
			curl = strings.TrimSpace(line)
		}
		if curl != "" {
			break
		}
	}
	if dashboard == "" || metrics == "" || curl == "" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("no dashboard, metrics and curl lines:\n%s", text.String())
	}
	for _, id := range []string{"fe1", "fe2", "fe3"} {
		if !regexp.MustCompile(id + ` http://127\.0\.0\.1:\d+`).MatchString(text.String()) {
			t.Errorf("front-ends line lacks %s", id)
		}
	}
	var rest strings.Builder
	restDone := make(chan struct{})
	go func() { // keep reading, so the demo never blocks on a full pipe
		defer close(restDone)
		for sc.Scan() {
			rest.WriteString(sc.Text() + "\n")
		}
	}()

	// The printed curl line, run as printed, completes a batch.
	out, err := exec.CommandContext(ctx, "sh", "-c", curl+" --silent --max-time 30").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `{"done":true`) || !strings.Contains(string(out), `"committed":2`) {
		t.Fatalf("%s: %v\n%s", curl, err, out)
	}
	for _, u := range []string{dashboard, metrics} {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %s", u, resp.StatusCode, b)
		}
		if u == metrics && !strings.Contains(string(b), "hafe_build_info") {
			t.Fatalf("GET %s has no hafe_build_info", u)
		}
	}

	cmd.Process.Signal(os.Interrupt)
	err = cmd.Wait()
	<-restDone
	text.WriteString(rest.String())
	if err != nil {
		t.Fatalf("after Ctrl-C: %v, want exit status 0\n%s", err, text.String())
	}
	t.Logf("demo output:\n%s", text.String())
	for _, want := range []string{"every transfer ran once", "front-ends stopped", "PostgreSQL stopped and its directory removed"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if n := len(childPID.FindAllString(text.String(), -1)); n != 7 {
		t.Errorf("%d front-ends and agents started, want 7 (three, fe1 restarted after its kill, the drained one after its drain, the agent, fe2 restarted after the agent's kill)", n)
	}
	checkChildrenGone(t, text.String())
}

// Without curl on the PATH the demo's second batch goes through the agent
// from Go's plain net/http client, and the story and checks are the same.
func TestDemoAgentWithoutCurl(t *testing.T) {
	requirePostgresBinaries(t)
	bin := buildHafe(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "demo", "--postgres", "local", "--transactions", "60", "--drain-at", "-1")
	cmd.Env = append(os.Environ(), "PATH="+t.TempDir())
	out, err := cmd.CombinedOutput()
	text := string(out)
	t.Logf("demo output:\n%s", text)
	if err != nil {
		t.Fatalf("hafe demo: %v", err)
	}
	for _, want := range []string{
		"with Go's plain net/http client through the agent (curl is not installed)",
		"on the same net/http connection and response",
		"the agent moved the connection fe2 -> ",
		"net/http's batch through hafe agent:",
		"ok   all 100 balances equal the committed transfers applied once each",
		"every transfer ran once",
		"front-ends stopped",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(text, "FAIL") {
		t.Error("a check failed")
	}
	checkChildrenGone(t, text)
}
