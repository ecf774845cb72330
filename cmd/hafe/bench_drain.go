package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"hafe.dev/hafe/internal/failbench"
)

func runBenchDrain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench drain", "bench drain [--conns N] [--batches N] [flags]",
		"Measures the drain of a front-end's MTCP connections on SIGTERM. Starts\n"+
			"PostgreSQL (throwaway, unless --db) and --front-ends real hafe serve\n"+
			"processes (this binary, MTCP eager), opens --conns MTCP connections to the\n"+
			"first one (each answers one GET /healthz), starts a batch of --batch-size\n"+
			"transfers on --batches of them and, once 20 of them stream (the others\n"+
			"wait for one of the front-end's 20 database connections), sends that\n"+
			"front-end SIGTERM. Its listener redirects every connection to the others.\n"+
			"Prints the front-end's own drain time (its \"mtcp drained\" log line), the\n"+
			"time until the client saw the last connection move and until the process\n"+
			"exited, and the dropped count: batches that did not complete with every\n"+
			"line plus connections that no longer answer a request afterwards.\n"+
			"The drain time judged is the later of the server's and the client's.\n"+
			"Target: at most 2s and none dropped.", stderr)
	var (
		db        = fs.String("db", "", "PostgreSQL URL of a scratch database (default: a throwaway server)")
		conns     = fs.Int("conns", 1000, "MTCP connections to the drained front-end")
		batches   = fs.Int("batches", 200, "of them, connections running a batch at the SIGTERM")
		batchSize = fs.Int("batch-size", 300, "transfers per batch")
		frontEnds = fs.Int("front-ends", 3, "front-end processes")
		keepLogs  = fs.Bool("keep-logs", false, "keep the front-ends' JSON logs and print where")
		mode      = fs.String("mtcp-mode", "eager", "the front-ends' --mtcp-mode: eager (each connection's new server saves its snapshot in the database) or lazy")
		timeout   = fs.Duration("drain-timeout", 30*time.Second, "the front-ends' --drain-timeout")
	)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *mode != "eager" && *mode != "lazy" {
		return usageError{cmd: "bench drain", err: fmt.Errorf("--mtcp-mode %q: want eager or lazy", *mode)}
	}
	o := failbench.DrainOptions{
		Cluster: failbench.ClusterOptions{DB: *db, FrontEnds: *frontEnds, KeepLogs: *keepLogs, DrainTimeout: *timeout, Lazy: *mode == "lazy"},
		Conns:   *conns, Batches: *batches, BatchSize: *batchSize,
	}
	if err := o.Check(); err != nil {
		return usageError{cmd: "bench drain", err: err}
	}
	if *frontEnds < 2 || *timeout <= 0 {
		return usageError{cmd: "bench drain", err: fmt.Errorf("need --front-ends ≥ 2 and --drain-timeout > 0")}
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("bench drain: %w", err)
	}
	o.Cluster.Binary = self
	res, err := failbench.RunDrain(ctx, o, stderr)
	if err != nil {
		return fmt.Errorf("bench drain: %w", err)
	}
	res.Report(stdout)
	return nil
}
