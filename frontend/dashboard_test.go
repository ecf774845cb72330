package frontend

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"hafe.dev/hafe/txn"
)

// chromium finds a Chromium or Chrome binary (Debian: apt-get install
// chromium), or skips the test.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("HAFE_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no chromium binary on PATH (Debian: apt-get install chromium; or set HAFE_CHROMIUM): the dashboard's browser test cannot run")
	return ""
}

// browser drives a headless Chromium on the dashboard and saves
// screenshots in the test's artifact directory (go test -artifacts keeps
// them under -outputdir).
type browser struct {
	t   *testing.T
	ctx context.Context
	dir string
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.Headless,
		chromedp.NoSandbox, // CI runs as root, where Chromium's sandbox refuses to start
		chromedp.DisableGPU,
		chromedp.WindowSize(1400, 1100),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return &browser{t: t, ctx: ctx, dir: t.ArtifactDir()}
}

// run runs a browser action, failing the test with what the page shows
// when it does not succeed within 30 seconds.
func run[T any](b *browser, what string, a chromedp.Action[T]) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		b.t.Fatalf("%s: %v\nthe page shows:\n%s", what, err, b.pageText())
	}
	return v
}

func (b *browser) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("%s: %v\nthe page shows:\n%s", what, err, b.pageText())
	}
}

// waitFor waits until the page shows an element matching selector.
func (b *browser) waitFor(what, selector string) {
	b.t.Helper()
	b.do("wait for "+what, chromedp.WaitVisible(chromedp.CSS(selector)))
}

func (b *browser) text(selector string) string {
	b.t.Helper()
	return strings.TrimSpace(run(b, "read "+selector, chromedp.Text(chromedp.CSS(selector))))
}

func (b *browser) pageText() string {
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
	if err != nil {
		return "(unreadable: " + err.Error() + ")"
	}
	return s
}

func (b *browser) screenshot(name string) {
	b.t.Helper()
	png := run(b, "screenshot "+name, chromedp.FullScreenshot(100))
	path := filepath.Join(b.dir, name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot: %s", path)
}

// killableMember heartbeats for f as Run does, until kill: then it stops
// without leaving the cluster, as a front-end that crashed.
func killableMember(t *testing.T, f *frontendUnderTest) (kill func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(f.cfg.HeartbeatInterval)
		defer tick.Stop()
		for {
			f.heartbeat(ctx)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	kill = func() { cancel(); <-done }
	t.Cleanup(kill)
	return kill
}

// The dashboard as an operator sees it in Chromium, on fe-2: both
// front-ends alive, a batch running on fe-1 with its progress, fe-1 gone
// after it stops heartbeating, and the takeover when the client resumes on
// fe-2. Screenshots idle.png, during-batch.png and after-takeover.png go to
// the test's artifact directory: make test keeps them under
// test-output/_artifacts/, as does go test -artifacts -outputdir DIR.
func TestDashboardShowsABatchRunningAndItsTakeoverAfterAFrontEndDies(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a browser")
	}
	br := newBrowser(t)
	url := newDB(t)
	db := newChecker(t, url)
	cfg := func(id string) Config {
		return Config{ID: id, AllowRawSQL: true, AdminToken: adminToken, HeartbeatInterval: 200 * time.Millisecond,
			Executor: txn.Config{OwnerLiveness: 2 * time.Second, FenceGrace: time.Second, Incarnation: id + "-run"}}
	}
	fe1 := startFrontend(t, url, cfg("fe-1"), false)
	kill := killableMember(t, fe1)
	fe2 := startFrontend(t, url, cfg("fe-2"), true)

	br.do("open the dashboard on fe-2",
		chromedp.Navigate(fe2.url+"/dashboard/?every=0.5"),
		chromedp.SendKeys(chromedp.CSS("#token"), adminToken),
		chromedp.Click(chromedp.CSS("#go")))
	br.waitFor("fe-1 alive", `#members tr[data-id="fe-1"][data-state="alive"]`)
	br.waitFor("fe-2 alive", `#members tr[data-id="fe-2"][data-state="alive"]`)
	br.waitFor("no batch", `#no-batches`)
	if got := br.text("#self"); got != "fe-2" {
		t.Fatalf("the chart is of %q, want fe-2", got)
	}
	br.screenshot("idle")

	// 20 transactions on fe-2, one of which aborts: the chart's window
	// holds samples from before and after them.
	txns := make([]string, 20)
	for i := range txns {
		txns[i] = transferTxn(1+i%5, 2+i%5, "1")
	}
	txns[7] = transferTxn(1, 2, "99999")
	if resp, out := fe2.post(t, batchBody(txns...), nil); resp.StatusCode != 200 {
		t.Fatalf("batch on fe-2: %d %s", resp.StatusCode, out)
	}
	run(br, "wait for the abort rate", chromedp.Poll[bool](`document.getElementById("abort-ratio").textContent === "5.0 %"`))

	// A batch on fe-1 whose second slot waits for a lock the test holds.
	lock := holdAdvisoryLock(t, url)
	body := batchBody(transferTxn(1, 2, "1"), rawTxn(holdLock, "INSERT INTO effects (note) VALUES ('b')"), transferTxn(1, 2, "99999"))
	key := map[string]string{"Idempotency-Key": "dash-1"}
	resp, err := fe1.doContext(context.Background(), request{path: "/v1/batches", body: body, header: key})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	id := resp.Header.Get("Hafe-Batch-Id")
	newStreamReader(resp).next(t)
	waitFor(t, "slot 2 to wait for the lock", func() bool { return db.lockWaiters() == 1 })

	row := `#batches tr[data-id="` + id + `"]`
	br.waitFor("the batch running on fe-1", row+`[data-state="running"][data-owner="fe-1"]`)
	if got := br.text(row + " td.progress"); got != "1/3" {
		t.Fatalf("progress %q, want 1/3", got)
	}
	br.waitFor("fe-1 running one batch", `#members tr[data-id="fe-1"] td:nth-child(4)`)
	if got := br.text(`#members tr[data-id="fe-1"] td:nth-child(4)`); got != "1" {
		t.Fatalf("fe-1's load %q, want 1", got)
	}
	br.screenshot("during-batch")

	// fe-1 stops heartbeating without leaving, as if killed: the
	// dashboard shows it gone and its batch abandoned.
	kill()
	br.waitFor("fe-1 gone", `#members tr[data-id="fe-1"][data-state="gone"]`)
	br.waitFor("the batch abandoned", row+`[data-state="abandoned"]`)

	// The client resumes on fe-2, which takes the batch over, fences fe-1
	// (terminating its session that waits for the lock) and waits for the
	// lock in turn.
	resumed := make(chan string, 1)
	go func() {
		r, err := fe2.doContext(context.Background(), request{path: "/v1/batches", body: body, header: key})
		if err != nil {
			resumed <- err.Error()
			return
		}
		defer r.Body.Close()
		lines := 0
		sc := newStreamReader(r).sc
		for sc.Scan() {
			lines++
		}
		resumed <- strings.Join([]string{r.Status, strings.Repeat("l", lines)}, " ")
	}()
	takeover := `#takeovers tr[data-batch="` + id + `"][data-from="fe-1"][data-to="fe-2"]`
	br.waitFor("the takeover by fe-2", takeover)
	br.waitFor("the batch now fe-2's", row+`[data-state="running"][data-owner="fe-2"]`)
	lock.release()
	if got := <-resumed; got != "200 OK llll" {
		t.Fatalf("resume on fe-2: %s, want 200 and 3 lines and the summary", got)
	}
	br.waitFor("no batch left", `#no-batches`)
	fence := `#fencing tr[data-batch="` + id + `"][data-fenced="fe-1"]`
	br.waitFor("fe-1 fenced", fence)
	if got := br.text(takeover + " td:nth-child(3)"); got != "2" {
		t.Fatalf("takeover epoch %q, want 2", got)
	}
	if got := br.text(fence + " td:nth-child(6)"); got != "1" {
		t.Fatalf("sessions terminated %q, want fe-1's one waiting for the lock", got)
	}
	if got := br.text("#fence-counters"); got != "blocker 0, previous_run 1" {
		t.Fatalf("fe-2's fence counters %q", got)
	}
	br.screenshot("after-takeover")
}

// The dashboard's migrations panel and the cluster's throughput, in
// Chromium: a batch streams over MTCP from fe-0 while its connection moves
// to fe-1 and back; the panel lists both moves with their phases, the
// members show their MTCP connections and what they executed. Screenshot
// migrations.png.
func TestDashboardShowsMigrations(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a browser")
	}
	br := newBrowser(t)
	url := newDB(t)
	db := newChecker(t, url)
	mc := startMTCPCluster(t, url, 2, true, func(c *Config) { c.AdminToken = adminToken })
	cl := newMTCPClient(t, mc.addrs)
	req, _ := http.NewRequest("POST", "http://"+mc.addrs[0]+"/v1/batches", strings.NewReader(effectBatch("m", 40)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := readBatch(t, resp, func(k int) {
		if k == 10 || k == 20 {
			cl.mu.Lock()
			c := cl.conn
			cl.mu.Unlock()
			to := mc.addrs[k/10%2]
			if err := c.Migrate(context.Background(), to); err != nil {
				t.Fatal(err)
			}
		}
	})
	checkExactlyOnce(t, db, "m", 40, lines)

	br.do("open the dashboard on fe-1",
		chromedp.Navigate(mc.fes[1].url+"/dashboard/?every=0.5"),
		chromedp.SendKeys(chromedp.CSS("#token"), adminToken),
		chromedp.Click(chromedp.CSS("#go")))
	br.waitFor("the move to fe-1", `#migrations tr[data-from="fe-0"][data-to="fe-1"][data-trigger="client"]`)
	br.waitFor("the move back to fe-0", `#migrations tr[data-from="fe-1"][data-to="fe-0"][data-trigger="client"]`)
	if got := br.text(`#migrations tr[data-to="fe-1"] td:nth-child(6)`); got != "peer" {
		t.Fatalf("state from %q, want peer (a lazy move from a live front-end)", got)
	}
	// What each executed reaches the table with its next heartbeat.
	run(br, "executed counts", chromedp.Poll[bool](`(() => {
		let n = 0;
		for (const td of document.querySelectorAll("#members tbody td:nth-child(6)")) n += Number(td.textContent);
		return n === 40;
	})()`))
	br.screenshot("migrations")
}
