package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"hafe.dev/hafe/internal/batchbench/compare"
	"hafe.dev/hafe/internal/mtcpbench"
	"hafe.dev/hafe/mtcp"
)

const benchUsage = `Usage: hafe bench <benchmark> [flags]

Benchmarks (each prints its measurements side by side from one run):
  batches   POST /v1/batches through hafe vs a plain chi+pgx handler that
            records nothing: transactions/s and per-transaction latency
            (--mtcp: also over MTCP; --tls: also with TLS on every hop)
  migrate   one-way MTCP migration between two servers on loopback, by phase
            and state size, lazy and with a warm standby path, against a
            TCP connect plus one round trip
  stream    a server streams 1 kB chunks and slows down; the client's rate
            policy migrates to a healthy server: CSV trace, PNG plot and
            effective throughput against the pre-slowdown rate
  mtcp      bulk throughput of an MTCP connection against raw TCP, and
            memory per idle server connection
  failover  the stall a client's batch sees when its front-end process is
            SIGKILLed: MTCP (eager) against plain HTTP retrying with the
            Idempotency-Key, alternating, p50/p99 over --kills kills
  drain     SIGTERM of a front-end holding --conns open MTCP connections
            (--batches of them running batches): drain time, dropped count
`

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, benchUsage)
		if len(args) == 0 {
			return errors.New("bench: name a benchmark")
		}
		return nil
	}
	switch args[0] {
	case "batches":
		return runBenchBatches(ctx, args[1:], stdout, stderr)
	case "migrate":
		return runBenchMigrate(ctx, args[1:], stdout, stderr)
	case "stream":
		return runBenchStream(ctx, args[1:], stdout, stderr)
	case "mtcp":
		return runBenchMTCP(ctx, args[1:], stdout, stderr)
	case "failover":
		return runBenchFailover(ctx, args[1:], stdout, stderr)
	case "drain":
		return runBenchDrain(ctx, args[1:], stdout, stderr)
	case idleClientsCommand:
		return runIdleClients(ctx, args[1:], stdout)
	}
	fmt.Fprint(stderr, benchUsage)
	return fmt.Errorf("bench: unknown benchmark %q", args[0])
}

func runBenchBatches(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench batches", "bench batches [--db URL] [flags]",
		"Sends batches of the demo bank's transfers from concurrent clients over\n"+
			"loopback HTTP to a hafe front-end and to a plain chi+pgx handler that runs\n"+
			"the same transactions (BEGIN, statements, COMMIT in one round trip) but\n"+
			"records nothing, alternating in rounds, and prints hafe/plain ratios.\n"+
			"Without --db it starts a throwaway PostgreSQL from the local server\n"+
			"binaries. With --db it installs hafe and the demo bank's accounts table\n"+
			"there and resets its balances: use a scratch database.\n"+
			"With --mtcp the same workload also goes over MTCP (HTTP/1.1 on Migratory\n"+
			"TCP, as hafe serve --mtcp-listen) to two more front-ends on the same pool:\n"+
			"eager (two snapshot writes per batch in the database: one at the request\n"+
			"boundary, one amend when the answer is decided) and lazy (state in memory),\n"+
			"and prints each against hafe over plain HTTP.\n"+
			"With --tls the hafe side (and with --mtcp the eager one) runs again with TLS\n"+
			"on every hop, on a front-end and pool of its own, and prints TLS/none.", stderr)
	var (
		db          = fs.String("db", "", "PostgreSQL URL of a scratch database (default: a throwaway server)")
		clients     = fs.Int("clients", 8, "concurrent clients")
		batchSize   = fs.Int("batch-size", 50, "transfers per batch")
		accounts    = fs.Int("accounts", 100, "transfers go between accounts 1..N (at most 100, the demo bank's)")
		duration    = fs.Duration("duration", 5*time.Second, "measuring time per side per round")
		rounds      = fs.Int("rounds", 2, "rounds; each runs both sides, in alternating order")
		poolSize    = fs.Int("pool-size", 16, "database connections of each side")
		keys        = fs.Bool("keys", true, "send an Idempotency-Key with every batch to hafe")
		interactive = fs.Bool("interactive", false, "also measure a plain handler that sends one statement per round trip")
		seed        = fs.Uint64("seed", 1, "seed of the generated batches")
		overMTCP    = fs.Bool("mtcp", false, "also send the batches over MTCP to front-ends of their own, eager and lazy, and print their throughput against hafe over plain HTTP (target 0.9x)")
		withTLS     = fs.Bool("tls", false, "also run hafe (and with --mtcp the eager MTCP front-end) with TLS on every hop: HTTPS or MTCP over TLS from the clients, TLS with a verified certificate to PostgreSQL (without --db; with --db as its URL says), and print each against the same side without TLS (target 0.9x)")
	)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *accounts < 2 || *accounts > 100 || *clients < 1 || *batchSize < 1 || *rounds < 1 || *duration <= 0 {
		return errors.New("bench batches: need 2 ≤ --accounts ≤ 100, --clients, --batch-size, --rounds ≥ 1 and --duration > 0")
	}
	return compare.Run(ctx, compare.Options{
		DB: *db, Clients: *clients, BatchSize: *batchSize, Accounts: *accounts, Duration: *duration,
		Rounds: *rounds, PoolSize: *poolSize, Keys: *keys, Interactive: *interactive, Seed: *seed,
		MTCP: *overMTCP, TLS: *withTLS,
	}, stdout, stderr)
}

func runBenchMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench migrate", "bench migrate [flags]",
		"Reproduces the seed's microbenchmark: a client migrates its MTCP connection\n"+
			"back and forth between two servers on loopback (lazy transfer over the\n"+
			"peer channel), for each application state size, in four variants: the\n"+
			"default client, which sends PREPARE (the origin pushes the state during\n"+
			"the dial) only on paths whose RTT is at least 100µs, so on loopback\n"+
			"the new server fetches the state after the MIGRATE; PREPARE always; no\n"+
			"PREPARE (the seed's protocol); and a warm standby path. Each round\n"+
			"takes one migration of every variant and a plain TCP connect plus one\n"+
			"round trip, in a shuffled order. Prints the mean time of every phase\n"+
			"on all three parties and the ratios.\n"+
			"With --delay it runs on a simulated network (gVisor netstack) whose links\n"+
			"add that one-way delay, where round trips dominate as on the seed's LAN.", stderr)
	var (
		runs   = fs.Int("runs", 200, "measured migrations per variant")
		sizes  = fs.String("sizes", "0,5,10", "application state sizes in kB, comma-separated")
		warmup = fs.Int("warmup", 10, "unmeasured migrations per connection first")
		delay  = fs.Duration("delay", 0, "run on a simulated network with this one-way link delay instead of loopback")
	)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var sz []int
	for _, f := range strings.Split(*sizes, ",") {
		k, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || k < 0 || k > 255 {
			return fmt.Errorf("bench migrate: --sizes: %q is not a size in kB below 256", f)
		}
		sz = append(sz, k<<10)
	}
	if *runs < 1 || *warmup < 1 || *delay < 0 {
		return errors.New("bench migrate: need --runs ≥ 1, --warmup ≥ 1 and --delay ≥ 0")
	}
	res, err := mtcpbench.RunMigrate(ctx, mtcpbench.MigrateConfig{Runs: *runs, Sizes: sz, Warmup: *warmup, Delay: *delay})
	if err != nil {
		return fmt.Errorf("bench migrate: %w", err)
	}
	fmt.Fprint(stdout, res.Table())
	fmt.Fprintln(stdout)
	for _, v := range res.Verdicts() {
		fmt.Fprintln(stdout, v)
	}
	return nil
}

func runBenchStream(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench stream", "bench stream [--out DIR] [flags]",
		"Reproduces the seed's streaming experiment on loopback: server s1 streams\n"+
			"chunks at a steady pace and slows down after --slow-after bytes; the\n"+
			"client's rate policy (smoothed inbound rate below 75% of the highest seen)\n"+
			"migrates to s2, which continues the stream from the last snapshot. Checks\n"+
			"every byte, writes stream.csv, stream.png and stream-start.png (the first\n"+
			"moments, enlarged) to --out and prints the\n"+
			"effective throughput against the pre-slowdown rate.", stderr)
	var (
		out       = fs.String("out", "./bench-out", "directory for stream.csv and stream.png")
		total     = fs.Int("total", 1<<20, "bytes streamed")
		chunk     = fs.Int("chunk", 1<<10, "bytes per chunk")
		slowAfter = fs.Int("slow-after", 32<<10, "s1 slows down after this many bytes")
		period    = fs.Duration("period", time.Millisecond, "time between chunks of a healthy server")
		slowdown  = fs.Float64("slowdown", 4, "s1's time between chunks is multiplied by this after the slow-down")
		interval  = fs.Duration("interval", 20*time.Millisecond, "the rate policy's sampling interval")
	)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *total < 1 || *chunk < 1 || *slowAfter < 1 || *slowAfter >= *total || *period <= 0 || *slowdown <= 1 || *interval <= 0 {
		return errors.New("bench stream: need 0 < --slow-after < --total, --chunk ≥ 1, --period and --interval > 0, --slowdown > 1")
	}
	res, err := mtcpbench.RunStream(ctx, mtcpbench.StreamConfig{
		Total: *total, Chunk: *chunk, SlowAfter: *slowAfter, Period: *period, Slowdown: *slowdown,
		Rate: mtcp.RatePolicy{Interval: *interval},
	})
	if err != nil {
		return fmt.Errorf("bench stream: %w", err)
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	csvPath, pngPath, zoomPath := filepath.Join(*out, "stream.csv"), filepath.Join(*out, "stream.png"), filepath.Join(*out, "stream-start.png")
	for _, f := range []struct {
		path  string
		write func(io.Writer) error
	}{{csvPath, res.WriteCSV}, {pngPath, res.WritePNG}, {zoomPath, res.WriteZoomPNG}} {
		if err := writeFile(f.path, f.write); err != nil {
			return err
		}
	}
	fmt.Fprint(stdout, res.Summary())
	fmt.Fprintf(stdout, "trace: %s (%d rows), plots: %s, %s\n\n", csvPath, len(res.Trace), pngPath, zoomPath)
	fmt.Fprintln(stdout, res.Verdict())
	return nil
}

// writeFile creates path and fills it with write.
func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		_ = f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}
func runBenchMTCP(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench mtcp", "bench mtcp [flags]",
		"Moves bulk data over raw TCP and over an MTCP connection on loopback, both\n"+
			"directions, in alternating rounds, and prints the rates side by side. Then\n"+
			"a full-duplex echo (the client writes and reads at once) over both, with\n"+
			"MTCP's default settings, and the migrations it caused (none is right).\n"+
			"Then measures the Go memory one idle server connection holds, MTCP and raw\n"+
			"TCP, with the client ends in a child process (this binary, re-run).", stderr)
	var (
		mib       = fs.Int("mib", 128, "MiB per transfer")
		rounds    = fs.Int("rounds", 11, "transfers per side and direction; the median counts")
		duplexMiB = fs.Int("duplex-mib", 8, "MiB per full-duplex echo (0: skip it)")
		conns     = fs.Int("conns", 500, "idle connections measured (0: skip the memory measurement)")
	)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *mib < 1 || *rounds < 1 || *conns < 0 || *duplexMiB < 0 {
		return errors.New("bench mtcp: need --mib ≥ 1, --rounds ≥ 1, --duplex-mib ≥ 0 and --conns ≥ 0")
	}
	tp, err := mtcpbench.RunThroughput(ctx, mtcpbench.ThroughputConfig{Bytes: int64(*mib) << 20, Rounds: *rounds})
	if err != nil {
		return fmt.Errorf("bench mtcp: %w", err)
	}
	fmt.Fprint(stdout, tp.Table())
	verdicts := tp.Verdicts()
	if *duplexMiB > 0 {
		dx, err := mtcpbench.RunDuplex(ctx, mtcpbench.DuplexConfig{Bytes: int64(*duplexMiB) << 20, Rounds: *rounds})
		if err != nil {
			return fmt.Errorf("bench mtcp: %w", err)
		}
		fmt.Fprintln(stdout)
		fmt.Fprint(stdout, dx.Table())
		verdicts = append(verdicts, dx.Verdicts()...)
	}
	if *conns > 0 {
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("bench mtcp: %w", err)
		}
		spawn := mtcpbench.CommandSpawner(func(ctx context.Context, addr string, n int, raw bool) *exec.Cmd {
			return exec.CommandContext(ctx, self, "bench", idleClientsCommand, "--raw="+strconv.FormatBool(raw), addr, strconv.Itoa(n))
		})
		mem, err := mtcpbench.RunIdleMemory(ctx, mtcpbench.IdleConfig{Conns: *conns, Spawn: spawn})
		if err != nil {
			return fmt.Errorf("bench mtcp: %w", err)
		}
		fmt.Fprintln(stdout)
		fmt.Fprint(stdout, mem.Table())
		verdicts = append(verdicts, mem.Verdict())
	}
	fmt.Fprintln(stdout)
	for _, v := range verdicts {
		fmt.Fprintln(stdout, v)
	}
	return nil
}

// idleClientsCommand is the hidden benchmark bench mtcp runs in a child
// process: it holds the client ends of the idle connections measured, so
// that only the server's memory is counted.
const idleClientsCommand = "mtcp-idle-clients"

func runIdleClients(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet(idleClientsCommand, flag.ContinueOnError)
	raw := fs.Bool("raw", false, "raw TCP instead of MTCP")
	if err := fs.Parse(args); err != nil {
		return err
	}
	n, err := strconv.Atoi(fs.Arg(1))
	if fs.NArg() != 2 || err != nil || n < 1 {
		return errors.New("usage: hafe bench " + idleClientsCommand + " [--raw] ADDR N")
	}
	return mtcpbench.RunIdleClients(ctx, fs.Arg(0), n, *raw, os.Stdin, stdout)
}
