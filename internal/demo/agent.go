package demo

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"hafe.dev/hafe/api"
)

// restartExited starts again, under their names, the front-ends the demo
// killed or drained, and waits until all three are ready.
func (d *demo) restartExited(ctx context.Context, dbURL string) error {
	for _, id := range []string{"fe1", "fe2", "fe3"} {
		if !d.children[id].exited() {
			continue
		}
		if _, err := d.startFrontEnd(ctx, dbURL, id); err != nil {
			return err
		}
	}
	return d.waitReady(ctx)
}

// startAgent starts `hafe agent` on a local port, seeded with one
// front-end's MTCP address, and waits until it answers /healthz.
func (d *demo) startAgent(ctx context.Context, seed *child) (*child, error) {
	addrs, err := freeLocalAddrs(2)
	if err != nil {
		return nil, err
	}
	a, err := d.startChild("hafe agent", "agent.log", "agent", "--listen", addrs[0], "--metrics-listen", addrs[1], "--servers", seed.mtcp)
	if err != nil {
		return nil, err
	}
	a.url = "http://" + addrs[0]
	d.atExit(a.stop)
	d.say("started hafe agent: pid %d, listening on %s, seeded with %s's MTCP address %s", a.cmd.Process.Pid, addrs[0], seed.id, seed.mtcp)
	return a, waitAnswers(ctx, a, "http://"+addrs[1]+"/healthz")
}

// submitThroughAgent sends the batch as an unchanged HTTP client would,
// through a local hafe agent: curl -N when it is installed, Go's plain
// net/http otherwise. The agent carries the connection over MTCP to the
// front-end seed; at line killAt that front-end is killed, and the
// response goes on from another one.
func (d *demo) submitThroughAgent(ctx context.Context, body []byte, n, killAt int, seed *child) (*submitted, error) {
	agent, err := d.startAgent(ctx, seed)
	if err != nil {
		return nil, err
	}
	url := agent.url + "/v1/batches"
	var stream io.Reader
	var wait func() error
	who := plainClient()
	if who == "curl" {
		curl, _ := exec.LookPath("curl")
		file := filepath.Join(d.work, "agent-batch.json")
		if err := os.WriteFile(file, body, 0o600); err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		d.say("sending %d more transfers with plain curl through the agent:", n)
		fmt.Fprintf(d.out, "          curl -sS -N -H 'Content-Type: application/json' --data-binary @%s %s\n", filepath.Base(file), url)
		cmd := exec.CommandContext(ctx, curl, "-sS", "-N", "-H", "Content-Type: application/json", "--data-binary", "@"+file, url)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("demo: run curl: %w", err)
		}
		stream = out
		wait = func() error {
			if err := cmd.Wait(); err != nil {
				return fmt.Errorf("demo: curl: %v: %s", err, strings.TrimSpace(stderr.String()))
			}
			return nil
		}
	} else {
		d.say("sending %d more transfers with Go's plain net/http client through the agent (curl is not installed): POST %s", n, url)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		hc := &http.Client{Transport: &http.Transport{}}
		resp, err := hc.Do(req)
		if err != nil {
			return nil, fmt.Errorf("demo: POST through the agent: %w", err)
		}
		// Closed before the agent stops: an idle keep-alive connection
		// would hold its shutdown.
		wait = func() error {
			resp.Body.Close()
			hc.CloseIdleConnections()
			return nil
		}
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			wait()
			return nil, fmt.Errorf("demo: POST through the agent: %s: %s", resp.Status, b)
		}
		stream = resp.Body
	}

	res := &submitted{status: map[int]string{}, lines: map[int]string{}}
	res.sum.Attempts = 1
	res.sum.FrontEnds = []string{seed.id}
	var (
		killed     time.Time
		begin      = time.Now()
		readErr    error
		sawSummary bool
	)
	sc := bufio.NewScanner(stream)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var r struct {
			api.Report
			api.Summary
		}
		if err := json.Unmarshal(line, &r); err != nil {
			readErr = fmt.Errorf("demo: a line through the agent is not JSON: %q", shorten(line, 110))
			break
		}
		if !r.Done && r.Seq == 0 {
			readErr = fmt.Errorf("demo: the response through the agent ended with an error: %s", line)
			break
		}
		if r.Done {
			sawSummary = true
			res.sum.BatchID, res.sum.Committed, res.sum.Aborted, res.sum.Done = r.BatchID, r.Committed, r.Aborted, true
			d.say("summary line: %s", line)
			continue
		}
		res.sum.Transactions++
		res.status[r.Seq] = r.Status
		res.lines[r.Seq] = string(line)
		switch {
		case !killed.IsZero():
			d.say("line %d arrived %.1fms after the kill, on the same %s connection and response: %s knows nothing of it",
				r.Seq, float64(time.Since(killed).Microseconds())/1000, who, who)
			killed = time.Time{}
		case r.Seq == 1:
			d.say("line 1 from %s: %s", seed.id, shorten(line, 110))
		}
		if r.Seq == killAt && r.Seq < n {
			d.say("%d of %d lines in: kill -9 %s (pid %d), the front-end the agent carries %s's connection to", r.Seq, n, seed.id, seed.cmd.Process.Pid, who)
			seed.kill()
			killed = time.Now()
		}
	}
	if readErr == nil {
		readErr = sc.Err()
	}
	if err := wait(); err != nil { // a failed curl says why before a short read does
		return res, err
	}
	if readErr != nil {
		return res, readErr
	}
	if !sawSummary {
		return res, fmt.Errorf("demo: the response through the agent ended after %d lines without its summary line", res.sum.Transactions)
	}
	d.say("batch done in %.2fs: %d committed, %d aborted; one %s request, one TCP connection", time.Since(begin).Seconds(), res.sum.Committed, res.sum.Aborted, who)
	for _, l := range grepLines(agent.log, "msg=migrated") {
		f := logFields(l)
		d.say("the agent moved the connection %s -> %s (%s): initiate %s, wait %s, complete %s (its log line: msg=migrated conn=%s mtcp_conn=%s ...)",
			d.nameOf(f["from"]), d.nameOf(f["to"]), f["trigger"], short(f["initiate"]), short(f["wait"]), short(f["complete"]), f["conn"], f["mtcp_conn"])
	}
	agent.stop()
	return res, nil
}

// plainClient is the unchanged client the demo runs through the agent:
// curl where it is installed, Go's net/http otherwise.
func plainClient() string {
	if _, err := exec.LookPath("curl"); err == nil {
		return "curl"
	}
	return "net/http"
}

// nameOf names the front-end whose MTCP address is addr.
func (d *demo) nameOf(addr string) string {
	for id, c := range d.children {
		if c.mtcp == addr {
			return id
		}
	}
	return addr
}

// logFields reads a text log line's key=value pairs (values without
// spaces or quotes).
func logFields(line string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Fields(line) {
		if k, v, ok := strings.Cut(kv, "="); ok {
			out[k] = v
		}
	}
	return out
}

// short rounds a logged duration for the narration.
func short(s string) string {
	d, err := time.ParseDuration(s)
	if err != nil {
		return s
	}
	if d < time.Millisecond {
		return d.Round(time.Microsecond).String()
	}
	return d.Round(100 * time.Microsecond).String()
}

// grepLines returns the lines of the file at path that contain s.
func grepLines(path, s string) []string {
	b, _ := os.ReadFile(path)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, s) {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return out
}
