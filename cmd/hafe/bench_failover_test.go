package main

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestBenchFailoverAndDrainCheckTheirFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"failover", "--kills", "0"}, "--kills"},
		{[]string{"failover", "--kill-at", "100", "--batch-size", "100"}, "--kill-at"},
		{[]string{"failover", "--heartbeat", "1s", "--owner-liveness", "1s"}, "--owner-liveness"},
		{[]string{"failover", "--front-ends", "1"}, "--front-ends"},
		{[]string{"failover", "--max-backoff", "-1s"}, "--max-backoff"},
		{[]string{"drain", "--conns", "0"}, "--conns"},
		{[]string{"drain", "--conns", "10", "--batches", "11"}, "--batches"},
		{[]string{"drain", "--batch-size", "0"}, "--batch-size"},
		{[]string{"drain", "--front-ends", "1"}, "--front-ends"},
		{[]string{"drain", "--mtcp-mode", "sometimes"}, "--mtcp-mode"},
	} {
		err := runBench(context.Background(), c.args, &bytes.Buffer{}, &bytes.Buffer{})
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("bench %v: %v; want a usage error naming %s", c.args, err, c.want)
		}
	}
	for _, name := range []string{"failover", "drain"} {
		var stderr bytes.Buffer
		err := runBench(context.Background(), []string{name, "--help"}, &bytes.Buffer{}, &stderr)
		if err == nil || !strings.Contains(stderr.String(), "SIGTERM") && !strings.Contains(stderr.String(), "SIGKILL") {
			t.Errorf("bench %s --help: %v\n%s", name, err, stderr.String())
		}
	}
}

// Smoke runs with tiny parameters: real hafe serve processes and a
// throwaway PostgreSQL.
func TestBenchFailoverSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and front-end processes")
	}
	requirePostgresBinaries(t)
	bin := buildHafe(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "bench", "failover", "--kills", "1", "--batch-size", "300", "--kill-at", "20", "--quiet").CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"MTCP (eager)", "plain HTTP + Idempotency-Key retry", "MTCP/HTTP stall", "client wait", "MTCP p99 stall"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestBenchDrainSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and front-end processes")
	}
	requirePostgresBinaries(t)
	bin := buildHafe(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "bench", "drain", "--conns", "20", "--batches", "4", "--batch-size", "200").CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"batches completed with every line: 4 of 4", "connections answering after the drain: 20 of 20", ", 0 dropped"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
