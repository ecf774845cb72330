package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestBenchUsageNamesTheMTCPBenchmarks(t *testing.T) {
	var stderr bytes.Buffer
	if err := runBench(context.Background(), []string{"--help"}, &bytes.Buffer{}, &stderr); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"batches", "migrate", "stream", "mtcp"} {
		if !strings.Contains(stderr.String(), "\n  "+name+" ") {
			t.Errorf("usage does not list %s:\n%s", name, stderr.String())
		}
	}
}

func TestBenchMigratePrintsThePhaseTableAndTargets(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	if err := runBench(ctx, []string{"migrate", "--runs", "5", "--warmup", "1"}, &stdout, &stderr); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{
		"mean of 5 runs", "0 kB", "5 kB", "10 kB",
		"initiate", "wait", "complete", "prepare request", "wait reply", "reinstate", "prepare reply",
		"TCP connect + 1 RTT", "migration / baseline", "Warm standby", "standby path used",
		"lazy migration, 0 kB state", "lazy migration, 10 kB state", "warm-standby migration",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestBenchStreamWritesTraceAndPlot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	args := []string{"stream", "--out", dir, "--total", "40960", "--slow-after", "8192", "--period", "500us"}
	if err := runBench(ctx, args, &stdout, &stderr); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), "received 40960 bytes, every one as streamed") {
		t.Errorf("output:\n%s", stdout.String())
	}
	f, err := os.Open(filepath.Join(dir, "stream.csv"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) < 2 || rows[len(rows)-1][1] != "40960" {
		t.Errorf("CSV has %d rows, last %v", len(rows), rows[len(rows)-1])
	}
	for _, name := range []string{"stream.png", "stream-start.png"} {
		p, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		_, err = png.Decode(p)
		p.Close()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
}

// TestBenchMTCPRunsItsIdleClientsInAChildProcess runs the real binary: the
// memory measurement re-runs it as the clients' process.
func TestBenchMTCPRunsItsIdleClientsInAChildProcess(t *testing.T) {
	bin := buildHafe(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "bench", "mtcp", "--mib", "1", "--rounds", "1", "--conns", "10").CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"client → server", "server → client", "MTCP/raw", "Memory per idle server connection", "bytes/conn",
		"bulk throughput client → server, MTCP / raw TCP", "memory per idle MTCP server connection"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
