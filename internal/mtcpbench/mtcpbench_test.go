package mtcpbench

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestMigrateMeasuresEveryPhaseOfEveryVariant(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := RunMigrate(ctx, MigrateConfig{Runs: 5, Sizes: []int{0, 2 << 10}, Warmup: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Lazy) != 2 || len(res.Standby) != 2 {
		t.Fatalf("%d lazy and %d standby variants, want 2 and 2", len(res.Lazy), len(res.Standby))
	}
	for _, v := range append(res.Lazy, res.Standby...) {
		p := v.Phases
		if p.Wait <= 0 || p.WaitReply <= 0 || p.Reinstate <= 0 || p.PrepareReply <= 0 || v.Total <= 0 {
			t.Errorf("%d kB standby=%v: a phase was not measured: %+v", v.StateBytes>>10, v.Standby, v)
		}
		// The state, plus at most an echoed byte not yet acknowledged.
		if v.Transferred < v.StateBytes || v.Transferred > v.StateBytes+16 {
			t.Errorf("%d kB standby=%v: %d bytes transferred", v.StateBytes>>10, v.Standby, v.Transferred)
		}
	}
	if res.Baseline <= 0 || res.RTT <= 0 || res.HotRTT <= 0 {
		t.Errorf("baselines not measured: %+v", res)
	}
	table := res.Table()
	for _, want := range []string{"initiate", "prepare request", "wait reply", "reinstate", "prepare reply", "TCP connect + 1 RTT", "Warm standby"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	if n := len(res.Verdicts()); n != 3 {
		t.Errorf("%d verdicts, want 3 (0 kB lazy, two standby)", n)
	}
}

func TestStreamDeliversExactlyTheStreamAndWritesTraceAndPlot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := StreamConfig{Total: 48 << 10, SlowAfter: 8 << 10, Period: 500 * time.Microsecond}
	res, err := RunStream(ctx, cfg)
	if err != nil {
		t.Fatal(err) // RunStream checks every byte and the EOF
	}
	if res.Received != int64(cfg.Total) {
		t.Fatalf("received %d bytes, want %d", res.Received, cfg.Total)
	}
	last := res.Trace[len(res.Trace)-1]
	if last.Received != int64(cfg.Total) {
		t.Errorf("trace ends at %d bytes", last.Received)
	}
	for i := 1; i < len(res.Trace); i++ {
		if res.Trace[i].Received <= res.Trace[i-1].Received || res.Trace[i].T < res.Trace[i-1].T {
			t.Fatalf("trace goes backwards at row %d", i)
		}
	}
	for _, m := range res.Migrations { // the policy may or may not fire on a loaded machine
		if m.From == m.To || m.Server.Err != nil {
			t.Errorf("migration %+v", m)
		}
	}
	var buf bytes.Buffer
	if err := res.WriteCSV(&buf); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&buf).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(res.Trace)+1 || strings.Join(rows[0], ",") != "time_s,received_bytes,server" {
		t.Fatalf("%d CSV rows for %d trace points, header %v", len(rows), len(res.Trace), rows[0])
	}
	if got := rows[len(rows)-1][1]; got != strconv.Itoa(cfg.Total) {
		t.Errorf("last CSV row says %s bytes", got)
	}
	if s := rows[1][2]; s != "s1" {
		t.Errorf("stream starts on %s, want s1", s)
	}
	buf.Reset()
	if err := res.WritePNG(&buf); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() < 100 || b.Dy() < 100 {
		t.Errorf("plot is %v", b)
	}
	buf.Reset()
	if err := res.WriteZoomPNG(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := png.Decode(&buf); err != nil {
		t.Fatal(err)
	}
	if res.PreRate <= 0 || res.Effective <= 0 {
		t.Errorf("rates not computed: %+v", res)
	}
}

func TestThroughputMeasuresBothSidesBothWays(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := RunThroughput(ctx, ThroughputConfig{Bytes: 1 << 20, Rounds: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []float64{res.Raw.Upload, res.Raw.Download, res.MTCP.Upload, res.MTCP.Download} {
		if r <= 0 {
			t.Fatalf("a rate is missing: %+v", res)
		}
	}
	if !strings.Contains(res.Table(), "MTCP/raw") || len(res.Verdicts()) != 2 {
		t.Error(res.Table())
	}
}

// idleClientsEnv makes the test binary, re-run, the client process of
// RunIdleMemory.
const idleClientsEnv = "MTCPBENCH_IDLE_CLIENTS"

func TestIdleClientsHelperProcess(t *testing.T) {
	args := os.Getenv(idleClientsEnv)
	if args == "" {
		t.Skip("the idle clients' process, run by TestIdleMemoryIsMeasuredInAnotherProcess")
	}
	f := strings.Fields(args)
	n, _ := strconv.Atoi(f[2])
	if err := RunIdleClients(context.Background(), f[1], n, f[0] == "raw", os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

func TestIdleMemoryIsMeasuredInAnotherProcess(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	spawn := CommandSpawner(func(ctx context.Context, addr string, n int, raw bool) *exec.Cmd {
		kind := "mtcp"
		if raw {
			kind = "raw"
		}
		c := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestIdleClientsHelperProcess$")
		c.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s %d", idleClientsEnv, kind, addr, n))
		return c
	})
	res, err := RunIdleMemory(ctx, IdleConfig{Conns: 20, Spawn: spawn})
	if err != nil {
		t.Fatal(err)
	}
	if res.Conns != 20 || !strings.Contains(res.Table(), "bytes/conn") {
		t.Errorf("%+v", res)
	}
	t.Logf("%.0f bytes per idle MTCP connection, %.0f per raw TCP one", res.MTCP, res.Raw)
}
