package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"hafe.dev/hafe/internal/failbench"
)

func runBenchFailover(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench failover", "bench failover [--kills N] [flags]",
		"Measures the stall a client sees when the front-end serving its batch dies.\n"+
			"Starts PostgreSQL (throwaway, unless --db) and --front-ends real hafe serve\n"+
			"processes (this binary) serving plain HTTP and MTCP in eager mode, all with\n"+
			"the same --heartbeat and --owner-liveness. Each round submits a batch of\n"+
			"--batch-size transfers and, when line --kill-at arrives, SIGKILLs the\n"+
			"front-end serving it, then restarts it under the same --id. Rounds\n"+
			"alternate between a client over MTCP (the connection migrates to another\n"+
			"front-end, which takes the batch over from the snapshot in the database\n"+
			"at once) and a plain HTTP client (client.Submit retries the same body and\n"+
			"Idempotency-Key on the next front-end, which must wait until the dead\n"+
			"owner's heartbeat is --owner-liveness old).\n"+
			"The stall is the time from the SIGKILL to the end of the longest silence\n"+
			"of the stream after it, i.e. to the first line the killed front-end had\n"+
			"not sent. Prints p50/p99/max per side and their ratios, where MTCP's stall\n"+
			"goes (detection, the client's initiate/wait/complete, the new server's\n"+
			"phases and its \"batch taken over\" from its log), and the verdict against\n"+
			"the 50 ms p99 target. Every batch must complete with every line once.", stderr)
	var (
		db         = fs.String("db", "", "PostgreSQL URL of a scratch database (default: a throwaway server)")
		kills      = fs.Int("kills", 50, "kills per side")
		batchSize  = fs.Int("batch-size", 1000, "transfers per batch")
		killAt     = fs.Int("kill-at", 100, "kill the serving front-end when this line arrives")
		frontEnds  = fs.Int("front-ends", 3, "front-end processes")
		keepLogs   = fs.Bool("keep-logs", false, "keep the front-ends' JSON logs (one line per migration, \"batch taken over\" lines) and print where")
		heartbeat  = fs.Duration("heartbeat", 200*time.Millisecond, "every front-end's --heartbeat")
		liveness   = fs.Duration("owner-liveness", time.Second, "every front-end's --owner-liveness: how long plain HTTP waits for a dead owner")
		minBackoff = fs.Duration("min-backoff", 0, "the plain HTTP client's MinBackoff (0: the client's default, 100ms)")
		maxBackoff = fs.Duration("max-backoff", 0, "the plain HTTP client's MaxBackoff, which caps Retry-After (0: the client's default, 5s)")
		keepAlive  = fs.Duration("mtcp-keepalive", 0, "the MTCP client's Triggers.KeepAlive (0: its default, 1s); its trigger loop ticks at half of it")
		quiet      = fs.Bool("quiet", false, "no line per kill on standard error")
		cold       = fs.Bool("cold", false, "do not warm a restarted front-end up with a small batch over MTCP and HTTP (a front-end in service has open database connections; a cold one opens them during the takeover)")
	)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	o := failbench.FailoverOptions{
		Cluster:    failbench.ClusterOptions{DB: *db, FrontEnds: *frontEnds, KeepLogs: *keepLogs, Heartbeat: *heartbeat, OwnerLiveness: *liveness},
		Kills:      *kills,
		BatchSize:  *batchSize,
		KillAt:     *killAt,
		MinBackoff: *minBackoff, MaxBackoff: *maxBackoff,
		Seed: 1, Cold: *cold, KeepAlive: *keepAlive,
	}
	if err := o.Check(); err != nil {
		return usageError{cmd: "bench failover", err: err}
	}
	if *minBackoff < 0 || *maxBackoff < 0 {
		return usageError{cmd: "bench failover", err: errors.New("need --min-backoff and --max-backoff ≥ 0")}
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("bench failover: %w", err)
	}
	o.Cluster.Binary = self
	var progress io.Writer = stderr
	if *quiet {
		progress = nil
	}
	res, err := failbench.RunFailover(ctx, o, progress)
	if err != nil {
		return fmt.Errorf("bench failover: %w", err)
	}
	res.Report(stdout)
	return nil
}
