package test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"hafe.dev/hafe/test/harness"
)

// mtcpLanes is how many clients the concurrent MTCP tests run, each on its
// own accounts (laneAccounts).
const mtcpLanes = 4

// startLanes starts one client per lane, each POSTing its own batch of n
// slots (runs tagged laneN) to fe over MTCP, and the reference runs of
// the same batches.
func (c *mtcpCluster) startLanes(ctx context.Context, t *testing.T, fe *harness.Hafe, n int, slow slowPoint) (runs []*mtcpRun, refs func() [][]byte) {
	t.Helper()
	var bodies [][]byte
	for lane := range mtcpLanes {
		tag := fmt.Sprintf("lane%d", lane+1)
		acc := laneAccounts(lane, mtcpLanes)
		body := failoverBatchOn(n, slow, tag, acc)
		bodies = append(bodies, body)
		runs = append(runs, &mtcpRun{client: newMTCPClient(t, tag, c.fes), tag: tag, body: body, accounts: acc})
	}
	refs = c.reference(ctx, t, bodies...)
	for _, r := range runs {
		r.stream = r.client.start(ctx, t, fe, r.body)
	}
	return runs, refs
}

// finishLanes waits for every lane's stream to end, then checks them all.
func (c *mtcpCluster) finishLanes(ctx context.Context, t *testing.T, runs []*mtcpRun, refs func() [][]byte, wait time.Duration) {
	t.Helper()
	for _, r := range runs {
		if err := r.stream.waitEnd(ctx, wait); err != nil {
			t.Fatalf("%s: the stream did not end: %v (%d lines, on %s)", r.tag, err, r.stream.lineCount(), r.client.server())
		}
	}
	for i, ref := range refs() {
		runs[i].ref = ref
	}
	c.checkRuns(ctx, t, runs...)
}

// TestMTCPDrainUnderLoad: fe1 (lazy mode: connection state lives only in
// the front-ends) runs four clients' batches when it gets SIGTERM. It
// drains: it redirects every MTCP connection to another front-end and
// hands each one's state over on the peer channel, the batches move with
// them, and fe1 exits 0 once none is left. No client sends a second
// request or loses its response.
func TestMTCPDrainUnderLoad(t *testing.T) {
	c := startMTCPCluster(t, 3, slowStatement, "lazy")
	fe1 := c.fes[0]
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	runs, refs := c.startLanes(ctx, t, fe1, failoverSlots, slowStatement)
	for _, r := range runs {
		if r.stream.frontEnd != "fe1" {
			t.Fatalf("%s started on %q, not fe1", r.tag, r.stream.frontEnd)
		}
		if err := r.stream.waitLines(ctx, failoverFaultAfter); err != nil {
			t.Fatalf("%s before SIGTERM: %v", r.tag, err)
		}
	}
	c.waitSlowSlot(ctx, t, "fe1")
	if err := fe1.Signal(ctx, "TERM"); err != nil {
		t.Fatal(err)
	}
	termAt := time.Now()
	exit := waitExit(ctx, t, fe1, 45*time.Second)
	t.Logf("fe1 exited %d, %s after SIGTERM", exit, time.Since(termAt).Round(time.Millisecond))
	if exit != 0 {
		t.Errorf("fe1 exited %d after its drain, want 0", exit)
	}
	c.finishLanes(ctx, t, runs, refs, 90*time.Second)

	for _, r := range runs {
		// The first successful move is the drain's redirect away from
		// fe1 (a loaded machine may add a spurious one later).
		moved := logMigrations(t, r.client)
		if len(moved) == 0 || moved[0].From != fe1.MTCPAddr || moved[0].Trigger != "redirect" {
			t.Errorf("%s: migrations %+v, want a redirect away from fe1 first", r.tag, moved)
			continue
		}
		if len(moved) > 1 {
			t.Logf("%s: %d migrations, %d after the drain's", r.tag, len(moved), len(moved)-1)
		}
		to := frontEndAt(c.fes, moved[0].To)
		if to == nil || to == fe1 {
			t.Errorf("%s: moved to %s, not one of the other front-ends", r.tag, moved[0].To)
			continue
		}
		// Lazy mode has no snapshots in the database: the state can only
		// have come from fe1. (The row's trigger is "client": the new
		// front-end, which writes it, cannot tell a redirect from any
		// other move; the client's own record above can.)
		ms := okMigrations(c.migrationsOf(ctx, t, r.client.connID(), 1))
		if len(ms) == 0 || ms[0].takenBy != to.Alias || ms[0].mode != "lazy" || ms[0].err != "" {
			t.Errorf("%s: hafe.migrations has %v for the connection, want first one taken by %s in lazy mode", r.tag, ms, to.Alias)
		}
	}
	drained := logLines(ctx, fe1, "mtcp drain", "drain timeout", "front-end stopped")
	for _, l := range drained {
		t.Logf("fe1: %s", l)
	}
	if !strings.Contains(strings.Join(drained, "\n"), "every connection moved to another front-end") {
		t.Errorf("fe1 did not report its MTCP connections drained")
	}
}

// waitExit waits (at most d) until the container's process has exited and
// returns its exit code.
func waitExit(ctx context.Context, t *testing.T, h *harness.Hafe, d time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		st, err := h.Testcontainer().State(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Running {
			return st.ExitCode
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatalf("%s still running %s after SIGTERM", h.Alias, d)
	return -1
}

// noSlow: no slot of the batch is slow.
const noSlow slowPoint = -1

// TestMTCPRollingRestart: four clients run long batches over MTCP, started
// on fe1, fe2, fe3 and fe1, while every front-end in turn gets SIGTERM,
// drains, exits 0 and is started again (eager mode, the default). Each
// connection follows the redirects from front-end to front-end, some more
// than once, and each client's one response finishes equal to its
// reference run.
func TestMTCPRollingRestart(t *testing.T) {
	// Measured on 2 cores: 4-6 lines a second per client (with the
	// reference runs going on too), the rolling restart taking 6-13s,
	// so 35-55 lines: 160 slots leave a margin of 3.
	const slots = 160
	c := startMTCPCluster(t, 3, noSlow, "eager")
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	var bodies [][]byte
	var runs []*mtcpRun
	for lane := range mtcpLanes {
		tag := fmt.Sprintf("lane%d", lane+1)
		acc := laneAccounts(lane, mtcpLanes)
		body := failoverBatchOn(slots, noSlow, tag, acc)
		bodies = append(bodies, body)
		runs = append(runs, &mtcpRun{client: newMTCPClient(t, tag, c.fes), tag: tag, body: body, accounts: acc})
	}
	refs := c.reference(ctx, t, bodies...)
	for i, r := range runs {
		fe := c.fes[i%len(c.fes)]
		r.stream = r.client.start(ctx, t, fe, r.body)
		if r.stream.frontEnd != fe.Alias {
			t.Fatalf("%s started on %q, not %s", r.tag, r.stream.frontEnd, fe.Alias)
		}
	}
	for _, r := range runs {
		if err := r.stream.waitLines(ctx, 10); err != nil {
			t.Fatalf("%s before the restarts: %v", r.tag, err)
		}
	}

	rollStart := time.Now()
	for _, fe := range c.fes {
		for _, r := range runs {
			if hasDone(r.stream.bytes()) {
				t.Fatalf("%s finished before %s's restart: the batches are too short for the test", r.tag, fe.Alias)
			}
		}
		at := time.Now()
		if err := fe.Signal(ctx, "TERM"); err != nil {
			t.Fatal(err)
		}
		exit := waitExit(ctx, t, fe, 45*time.Second)
		stopped := time.Since(at)
		if exit != 0 {
			t.Errorf("%s exited %d after its drain, want 0", fe.Alias, exit)
		}
		if err := fe.Start(ctx); err != nil {
			t.Fatalf("start %s again: %v", fe.Alias, err)
		}
		for _, other := range c.fes {
			c.waitServerList(ctx, t, other)
		}
		var lines []string
		for _, r := range runs {
			lines = append(lines, fmt.Sprintf("%s %d lines on %s", r.tag, r.stream.lineCount(), r.client.server()))
		}
		t.Logf("%s: drained and exited %d in %s, back and listed in %s; %s", fe.Alias, exit, stopped.Round(time.Millisecond),
			(time.Since(at) - stopped).Round(time.Millisecond), strings.Join(lines, ", "))
	}
	t.Logf("rolling restart took %s", time.Since(rollStart).Round(time.Millisecond))
	c.finishLanes(ctx, t, runs, refs, 90*time.Second)
	for _, r := range runs {
		if moved := logMigrations(t, r.client); len(moved) == 0 {
			t.Errorf("%s never migrated", r.tag)
		}
	}
}
