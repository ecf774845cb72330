package main

import (
	"bufio"
	"bytes"
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
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/internal/pgtemp"
	"hafe.dev/hafe/mtcp"
	hafesql "hafe.dev/hafe/sql"
)

// agentCluster is n hafe serve processes serving over MTCP in eager mode
// on one throwaway database, and a hafe agent process in front of them.
type agentCluster struct {
	url       string
	ids       []string
	procs     map[string]*exec.Cmd
	mtcp      []string
	http      []string // the front-ends' plain HTTP listeners
	agentAddr string
	metrics   string
	agentLog  *lockedBuffer
	agent     *exec.Cmd
	bin       string // the hafe binary
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

const agentTestAdminToken = "agent-test-admin"

// freeAddr is a loopback address nobody listens on right now.
func freeAddr(t *testing.T) string { return freeAddrOn(t, "127.0.0.1") }

// freeAddrOn is an address of host (an address of this machine) nobody
// listens on right now, and not one it returned before: the system may
// hand a port just closed out again, and two calls in a row would give one
// process the same port twice.
func freeAddrOn(t *testing.T, host string) string {
	for {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		handedOut.Lock()
		seen := handedOut.addrs[addr]
		handedOut.addrs[addr] = true
		handedOut.Unlock()
		if !seen {
			return addr
		}
	}
}

var handedOut = struct {
	sync.Mutex
	addrs map[string]bool
}{addrs: map[string]bool{}}

func startAgentCluster(t *testing.T, n int, agentArgs ...string) *agentCluster {
	t.Helper()
	ac := startFrontEnds(t, n, "127.0.0.1")
	ac.agentAddr, ac.metrics = freeAddr(t), freeAddr(t)
	ac.startAgent(t, nil, append([]string{"--listen", ac.agentAddr, "--servers", ac.mtcp[0], "--metrics-listen", ac.metrics, "--path-timeout", "1s"}, agentArgs...)...)
	return ac
}

// startFrontEnds starts n hafe serve processes serving over MTCP on
// mtcpHost (an address of this host) and waits until the first one lists
// them all; no agent yet.
func startFrontEnds(t *testing.T, n int, mtcpHost string) *agentCluster {
	t.Helper()
	requirePostgresBinaries(t)
	bin := buildHafe(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pg, err := pgtemp.Start(ctx, pgtemp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })
	url, err := pg.NewDatabase(ctx, "agent")
	if err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE ROLE hafe_client LOGIN PASSWORD 'client-secret'"); err != nil {
		t.Fatal(err)
	}
	if _, err := backendext.Install(ctx, admin, backendext.InstallOptions{ForceSchema: true}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, hafesql.DemoSchema()); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, `CREATE TABLE effects (id serial PRIMARY KEY, note text NOT NULL);
		GRANT SELECT, INSERT ON effects TO hafe_client; GRANT USAGE ON SEQUENCE effects_id_seq TO hafe_client`); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	key := filepath.Join(dir, "cluster.key")
	if err := os.WriteFile(key, []byte("agent test cluster key, 32 bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	ac := &agentCluster{url: url, procs: map[string]*exec.Cmd{}, agentLog: &lockedBuffer{}}
	rawURL := strings.Replace(url, "postgres://postgres@", "postgres://hafe_client:client-secret@", 1)
	var https []string
	for i := range n {
		id := fmt.Sprintf("fe-%d", i)
		addr, maddr := freeAddr(t), freeAddrOn(t, mtcpHost)
		logf, err := os.Create(filepath.Join(dir, id+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "serve", "--db", url, "--listen", addr, "--id", id, "--allow-superuser",
			"--allow-raw-sql", "--raw-sql-db", rawURL,
			"--heartbeat", "200ms", "--owner-liveness", "1s", "--fence-grace", "1s", "--drain-timeout", "5s",
			"--admin-token", agentTestAdminToken, "--mtcp-listen", maddr, "--cluster-key-file", key)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
			logf.Close()
			if t.Failed() {
				b, _ := os.ReadFile(logf.Name())
				t.Logf("%s's log:\n%s", id, lastLinesOf(string(b), 30))
			}
		})
		ac.ids = append(ac.ids, id)
		ac.procs[id] = cmd
		ac.mtcp = append(ac.mtcp, maddr)
		https = append(https, addr)
	}
	for _, addr := range https {
		waitServeReady(t, "http://"+addr)
	}
	ac.http = https
	// The agent starts from fe-0 alone: wait until fe-0 tells its MTCP
	// clients about every front-end (it learns them from the members'
	// heartbeats), as a cluster that has run a while does.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		c, err := (&mtcp.Dialer{}).DialMTCP(ctx, ac.mtcp[0])
		if err == nil {
			known := len(c.Servers())
			c.Close()
			if known >= n {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("fe-0 never listed the %d front-ends to its MTCP clients", n)
		}
	}
	ac.bin = bin
	return ac
}

// startAgent starts hafe agent with args, its command line after prefix
// (e.g. ip netns exec NS), and waits until its metrics listener at
// ac.metrics answers.
func (ac *agentCluster) startAgent(t *testing.T, prefix []string, args ...string) {
	t.Helper()
	ac.agentLog = &lockedBuffer{}
	argv := append(append(append([]string(nil), prefix...), ac.bin, "agent"), args...)
	agent := exec.Command(argv[0], argv[1:]...)
	ac.agent = agent
	agent.Stdout, agent.Stderr = ac.agentLog, ac.agentLog
	agent.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	log := ac.agentLog
	exited := make(chan struct{})
	go func() { agent.Wait(); close(exited) }()
	t.Cleanup(func() {
		agent.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("agent's log:\n%s", log.String())
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", ac.metrics); err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			t.Fatalf("the agent exited: %v\n%s", agent.ProcessState, log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent never listened:\n%s", log.String())
		}
	}
}

func lastLinesOf(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// slowEffectBatch is n raw SQL transactions, each leaving one effect
// named after its slot and taking 50 ms, so a test can act in the middle.
func slowEffectBatch(tag string, n int) []byte {
	txns := make([]string, n)
	for i := range txns {
		q1, _ := json.Marshal(fmt.Sprintf("INSERT INTO effects (note) VALUES ('%s-%d')", tag, i+1))
		txns[i] = `{"sql":[{"query":` + string(q1) + `},{"query":"SELECT pg_sleep(0.05)"}]}`
	}
	return []byte(`{"transactions":[` + strings.Join(txns, ",") + `]}`)
}

var batchIDs = regexp.MustCompile(`"batch_id":"[^"]*"`)

// batchLine is one line of a batch's response: a slot's report or the
// summary.
type batchLine struct {
	Seq       int    `json:"seq"`
	Status    string `json:"status"`
	Done      bool   `json:"done"`
	Committed int    `json:"committed"`
	Aborted   int    `json:"aborted"`
}

// streamed is a batch response as a client sees it.
type streamed struct {
	status   int
	frontEnd string // Hafe-Front-End
	body     *bufio.Reader
	wait     func() error // the client's end: its exit status
}

// agentClient sends body to the batch API at addr (the agent) and
// returns the response as it streams in.
type agentClient func(t *testing.T, addr string, body []byte) streamed

// curlClient is curl -N, as a shell script would run it.
func curlClient(t *testing.T, addr string, body []byte) streamed { return curlIn()(t, addr, body) }

// curlIn is curl -N run after prefix, e.g. ip netns exec NS.
func curlIn(prefix ...string) agentClient {
	return func(t *testing.T, addr string, body []byte) streamed { return runCurl(t, prefix, addr, body) }
}

func runCurl(t *testing.T, prefix []string, addr string, body []byte) streamed {
	path := filepath.Join(t.TempDir(), "batch.json")
	os.WriteFile(path, body, 0o600)
	argv := append(append([]string(nil), prefix...), "curl", "-N", "-sS", "-i", "--noproxy", "*", "-H", "Content-Type: application/json",
		"--data-binary", "@"+path, "http://"+addr+"/v1/batches")
	cmd := exec.Command(argv[0], argv[1:]...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(out)
	s := streamed{body: br, wait: func() error {
		if err := cmd.Wait(); err != nil {
			return fmt.Errorf("curl: %v: %s", err, stderr.String())
		}
		return nil
	}}
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("curl's head: %v: %s", err, stderr.String())
		}
		l = strings.TrimRight(l, "\r\n")
		if l == "" {
			return s
		}
		if strings.HasPrefix(l, "HTTP/") {
			f := strings.Fields(l)
			s.status, _ = strconv.Atoi(f[1])
		} else if k, v, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, "Hafe-Front-End") {
			s.frontEnd = strings.TrimSpace(v)
		}
	}
}

const pythonClientScript = `import http.client, sys
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
body = open(path, 'rb').read()
c = http.client.HTTPConnection(host, port, timeout=60)
c.request('POST', '/v1/batches', body=body, headers={'Content-Type': 'application/json'})
r = c.getresponse()
sys.stdout.write('%d %s\n' % (r.status, r.getheader('Hafe-Front-End')))
sys.stdout.flush()
while True:
    l = r.readline()
    if not l:
        break
    sys.stdout.write(l.decode())
    sys.stdout.flush()
`

// pythonClient is Python's http.client.
func pythonClient(t *testing.T, addr string, body []byte) streamed { return pythonIn()(t, addr, body) }

// pythonIn is Python's http.client run after prefix, e.g. ip netns exec NS.
func pythonIn(prefix ...string) agentClient {
	return func(t *testing.T, addr string, body []byte) streamed { return runPython(t, prefix, addr, body) }
}

func runPython(t *testing.T, prefix []string, addr string, body []byte) streamed {
	dir := t.TempDir()
	script, path := filepath.Join(dir, "client.py"), filepath.Join(dir, "batch.json")
	os.WriteFile(script, []byte(pythonClientScript), 0o600)
	os.WriteFile(path, body, 0o600)
	host, port, _ := net.SplitHostPort(addr)
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal(err)
	}
	argv := append(append([]string(nil), prefix...), python, script, host, port, path)
	cmd := exec.Command(argv[0], argv[1:]...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(out)
	head, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("python: %v: %s", err, stderr.String())
	}
	var s streamed
	fmt.Sscanf(head, "%d %s", &s.status, &s.frontEnd)
	s.body = br
	s.wait = func() error {
		if err := cmd.Wait(); err != nil {
			return fmt.Errorf("python: %v: %s", err, stderr.String())
		}
		return nil
	}
	return s
}

// goClient is Go's net/http with its defaults.
func goClient(t *testing.T, addr string, body []byte) streamed {
	resp, err := http.Post("http://"+addr+"/v1/batches", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return streamed{status: resp.StatusCode, frontEnd: resp.Header.Get("Hafe-Front-End"), body: bufio.NewReader(resp.Body),
		wait: func() error { return resp.Body.Close() }}
}

// TestUnchangedClientsThroughTheAgentSurviveAKillOrDrain: curl, Python's
// http.client and Go's net/http send a batch through hafe agent; in the
// middle the front-end serving it is killed (SIGKILL) or drained. The
// response goes on from the other front-end on the same connection:
// every line once, in order, the summary last, and the database shows
// each slot's effect exactly once for each committed line and never
// twice.
func TestUnchangedClientsThroughTheAgentSurviveAKillOrDrain(t *testing.T) {
	for _, tc := range []struct {
		name   string
		needs  string
		client agentClient
	}{
		{"curl", "curl", curlClient},
		{"python", "python3", pythonClient},
		{"go", "", goClient},
	} {
		for _, fault := range []string{"kill", "drain"} {
			t.Run(tc.name+"/"+fault, func(t *testing.T) {
				if tc.needs != "" {
					if _, err := exec.LookPath(tc.needs); err != nil {
						t.Skipf("%s is not installed: this client's run needs it", tc.needs)
					}
				}
				runThroughAgent(t, startAgentCluster(t, 2), tc.name, tc.client, fault)
			})
		}
	}
}

func runThroughAgent(t *testing.T, ac *agentCluster, name string, client agentClient, fault string) {
	const n, faultAt = 40, 10
	s := client(t, ac.agentAddr, slowEffectBatch("e", n))
	victim := ac.procs[s.frontEnd]
	if s.status != 200 || victim == nil {
		t.Fatalf("status %d from front-end %q", s.status, s.frontEnd)
	}
	var lines []batchLine
	var got bytes.Buffer
	var faulted, resumed time.Time
	for {
		raw, err := s.body.ReadBytes('\n')
		if err == io.EOF && len(raw) == 0 {
			break
		}
		if err != nil {
			t.Fatalf("after %d lines: %v", len(lines), err)
		}
		var l batchLine
		if err := json.Unmarshal(raw, &l); err != nil {
			t.Fatalf("line %d %q: %v", len(lines)+1, raw, err)
		}
		got.Write(raw)
		lines = append(lines, l)
		if len(lines) == faultAt+1 {
			resumed = time.Now()
		}
		if len(lines) == faultAt {
			faulted = time.Now()
			if fault == "kill" {
				victim.Process.Kill()
			} else {
				go drainFrontEnd(t, ac.http[slices.Index(ac.ids, s.frontEnd)])
			}
		}
	}
	if err := s.wait(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: next line %v after the %s of %s (a slot takes 50 ms)", name, resumed.Sub(faulted).Round(time.Millisecond), fault, s.frontEnd)
	checkEffectsOnce(t, ac.url, "e", n, lines)
	// Byte for byte what a fault-free run answers (the same batch, its
	// effects named apart), but for the batch's id.
	ref := client(t, ac.agentAddr, slowEffectBatch("r", n))
	want, err := io.ReadAll(ref.body)
	if err != nil || ref.wait() != nil || bytes.Count(want, []byte("\n")) != n+1 {
		t.Fatalf("reference run: %v: %q", err, want)
	}
	if a, b := batchIDs.ReplaceAll(got.Bytes(), nil), batchIDs.ReplaceAll(want, nil); !bytes.Equal(a, b) {
		t.Errorf("the response differs from a fault-free one:\n%s\nwant\n%s", a, b)
	}
	trigger := map[string]string{"kill": "path_failure", "drain": "redirect"}[fault]
	log := ac.agentLog.String()
	if !strings.Contains(log, "msg=migrated") || !strings.Contains(log, "trigger="+trigger) {
		t.Errorf("the agent logged no migration for the %s:\n%s", fault, log)
	}
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "msg=migrated") {
			t.Log(l)
		}
	}
	resp, err := http.Get("http://" + ac.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := `hafe_agent_migrations_total{result="ok",trigger="` + trigger + `"} 1`; !strings.Contains(string(m), want) {
		t.Errorf("metrics lack %s:\n%s", want, m)
	}
}

// drainFrontEnd asks the front-end at addr to drain, as hafe drain does.
func drainFrontEnd(t *testing.T, addr string) {
	req, _ := http.NewRequest("POST", "http://"+addr+"/admin/drain?wait=20s", nil)
	req.Header.Set("Authorization", "Bearer "+agentTestAdminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Errorf("drain: %v", err)
		return
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("drain: status %d: %s", resp.StatusCode, body)
	}
}

// checkEffectsOnce checks a finished batch's lines against the database:
// every slot reported once and in order, a summary that adds up, each
// committed slot's effect there once, no effect twice.
func checkEffectsOnce(t *testing.T, url, tag string, n int, lines []batchLine) {
	t.Helper()
	if len(lines) != n+1 {
		t.Fatalf("%d lines, want %d and a summary", len(lines), n)
	}
	ctx := context.Background()
	db, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	count := func(q string, args ...any) int {
		var k int
		if err := db.QueryRow(ctx, q, args...).Scan(&k); err != nil {
			t.Fatal(err)
		}
		return k
	}
	committed := 0
	for i, l := range lines[:n] {
		if l.Seq != i+1 {
			t.Fatalf("line %d reports slot %d", i+1, l.Seq)
		}
		if l.Status == "committed" {
			committed++
			if got := count("SELECT count(*) FROM effects WHERE note = $1", fmt.Sprintf("%s-%d", tag, l.Seq)); got != 1 {
				t.Errorf("slot %d reported committed; its effect is there %d times", l.Seq, got)
			}
		}
	}
	sum := lines[n]
	if !sum.Done || sum.Committed != committed || sum.Committed+sum.Aborted != n {
		t.Errorf("summary %+v, %d committed lines", sum, committed)
	}
	if committed != n {
		t.Errorf("%d of %d slots committed", committed, n)
	}
	if dup := count("SELECT count(*) FROM (SELECT note FROM effects WHERE note LIKE $1 GROUP BY note HAVING count(*) > 1) x", tag+"-%"); dup != 0 {
		t.Errorf("%d effects ran more than once", dup)
	}
	if got := count("SELECT count(*) FROM effects WHERE note LIKE $1", tag+"-%"); got != committed {
		t.Errorf("%d effects in the database, %d reported committed", got, committed)
	}
	if got := count("SELECT count(*) FROM hafe.batches"); got != 1 {
		t.Errorf("%d batches: the request ran more than once", got)
	}
}

// TestLargeBodiesThroughTheAgent: a 6 MiB batch (near hafe serve's
// default --max-body-bytes) goes through the agent to an eager front-end,
// which acknowledges it only once answered, so the agent holds it whole;
// a 32 MiB body is refused with 413 promptly, not stuck in the agent.
func TestLargeBodiesThroughTheAgent(t *testing.T) {
	ac := startAgentCluster(t, 2)
	stmts := make([]string, 100)
	for i := range stmts {
		q, _ := json.Marshal(fmt.Sprintf("SELECT %d AS n /* %s */", i, strings.Repeat("x", 63<<10)))
		stmts[i] = `{"query":` + string(q) + `}`
	}
	big := []byte(`{"transactions":[{"sql":[` + strings.Join(stmts, ",") + `]}]}`)
	start := time.Now()
	resp, err := http.Post("http://"+ac.agentAddr+"/v1/batches", "application/json", bytes.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"committed":1`)) {
		t.Fatalf("%d MiB batch: status %d, %v: %.300s", len(big)>>20, resp.StatusCode, err, body)
	}
	t.Logf("a %.1f MiB batch through the agent in %v", float64(len(big))/(1<<20), time.Since(start).Round(time.Millisecond))

	huge := bytes.Repeat([]byte(" "), 32<<20)
	copy(huge, `{"transactions":[]}`)
	start = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+ac.agentAddr+"/v1/batches", bytes.NewReader(huge))
	req.Header.Set("Content-Type", "application/json")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("32 MiB body: %v after %v", err, time.Since(start))
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("32 MiB body: status %d: %.300s", resp.StatusCode, body)
	}
	t.Logf("a 32 MiB body refused with 413 through the agent in %v", time.Since(start).Round(time.Millisecond))

	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed: the 32 MiB upload with curl is skipped")
	}
	path := filepath.Join(t.TempDir(), "huge.json")
	os.WriteFile(path, huge, 0o600)
	out, err := exec.Command("curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Content-Type: application/json",
		"--data-binary", "@"+path, "http://"+ac.agentAddr+"/v1/batches").CombinedOutput()
	if err != nil || string(out) != "413" {
		t.Fatalf("curl with a 32 MiB body: %v: %s", err, out)
	}
}

// TestAgentFlags: the agent refuses what cannot work before it listens,
// and takes its servers from HAFE_SERVERS.
func TestAgentFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--servers is required"},
		{[]string{"--servers", "fe1"}, "want HOST:PORT"},
		{[]string{"--servers", "fe1:9090", "--rate-threshold", "1.5"}, "--rate-threshold"},
		{[]string{"--servers", "fe1:9090", "--send-buffer", "100"}, "--send-buffer"},
		{[]string{"--servers", "fe1:9090", "extra"}, "unexpected arguments"},
		// TUN mode: refused before anything is created.
		{[]string{"--servers", "fe1:9090", "--tun", "hafetun0"}, "--tun needs at least one --service"},
		{[]string{"--servers", "fe1:9090", "--service", "10.77.0.1:80"}, "--service is for TUN mode"},
		{[]string{"--servers", "fe1:9090", "--tun-mtu", "9000"}, "--tun-mtu is for TUN mode"},
		{[]string{"--servers", "fe1:9090", "--tun", "hafetun0", "--service", "10.77.0.1"}, "want ADDR:PORT"},
		{[]string{"--servers", "fe1:9090", "--tun", "hafetun0", "--service", "127.0.0.1:80"}, "loopback"},
		{[]string{"--servers", "fe1:9090", "--tun", "hafetun0", "--service", "10.77.0.1:80,10.77.0.1:80"}, "given twice"},
		{[]string{"--servers", "fe1:9090", "--tun", "hafe-tun-name-too-long", "--service", "10.77.0.1:80"}, "at most 15 bytes"},
		{[]string{"--servers", "fe1:9090", "--tun", "hafetun0", "--service", "10.77.0.1:80", "--tun-mtu", "100"}, "MTU 100"},
		{[]string{"--servers", "fe1:9090", "--tun", "hafetun0", "--service", "[fd77::1]:80", "--tun-mtu", "1000"}, "IPv6 needs an MTU"},
	} {
		err := runAgent(context.Background(), tc.args, io.Discard, io.Discard)
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want a usage error about %s", tc.args, err, tc.want)
		}
	}
	t.Setenv("HAFE_SERVERS", "127.0.0.1:1")
	t.Setenv("HAFE_LISTEN", "127.0.0.1:0")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var logs bytes.Buffer
	if err := runAgent(ctx, nil, io.Discard, &logs); err != nil {
		t.Fatalf("%v\n%s", err, logs.String())
	}
	if !strings.Contains(logs.String(), "agent listening") || !strings.Contains(logs.String(), "servers=127.0.0.1:1") {
		t.Errorf("log:\n%s", logs.String())
	}
}
