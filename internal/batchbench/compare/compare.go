// Package compare is "hafe bench batches": the same workload through a hafe
// front-end and through plain handlers, side by side in one run.
package compare

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/frontend"
	"hafe.dev/hafe/internal/batchbench"
	"hafe.dev/hafe/internal/pgtemp"
	"hafe.dev/hafe/mtcp"
	hafesql "hafe.dev/hafe/sql"
)

// Options are "hafe bench batches"'s settings; see its flags.
type Options struct {
	DB          string // scratch database; "" starts a throwaway server
	Clients     int
	BatchSize   int
	Accounts    int
	Duration    time.Duration
	Rounds      int
	PoolSize    int
	Keys        bool
	Interactive bool
	Seed        uint64
	// MTCP adds hafe front-ends served over MTCP, eager (a snapshot saved
	// in the database at every request boundary and amended once per
	// batch) and lazy (state kept in memory), each its own front-end on
	// the same pool as the HTTP one.
	MTCP bool
}

// Run runs the same workload through a hafe front-end and through the
// plain handlers, in alternating rounds, and prints the ratios.
func Run(ctx context.Context, o Options, stdout, stderr io.Writer) error {
	url := o.DB
	if url == "" {
		fmt.Fprintln(stderr, "starting a throwaway PostgreSQL…")
		srv, err := pgtemp.Start(ctx, pgtemp.Options{})
		if err != nil {
			return err
		}
		defer srv.Stop()
		if url, err = srv.NewDatabase(ctx, "bench"); err != nil {
			return err
		}
	}
	if err := prepareDB(ctx, url); err != nil {
		return err
	}
	newPool := func(id string) (*pgxpool.Pool, error) {
		cfg, err := pgxpool.ParseConfig(url)
		if err != nil {
			return nil, fmt.Errorf("--db: %w", err)
		}
		cfg.MaxConns = int32(o.PoolSize)
		backendext.ConfigurePool(cfg, id, "", time.Minute)
		return pgxpool.NewWithConfig(ctx, cfg)
	}
	hafePool, err := newPool("bench-hafe")
	if err != nil {
		return err
	}
	defer hafePool.Close()
	plainPool, err := newPool("bench-plain")
	if err != nil {
		return err
	}
	defer plainPool.Close()

	fe, err := frontend.New(hafePool, frontend.Config{ID: "bench-hafe"}, nil)
	if err != nil {
		return err
	}
	memberCtx, stopMember := context.WithCancel(ctx)
	memberDone := make(chan struct{})
	go func() { fe.Run(memberCtx); close(memberDone) }()
	defer func() { stopMember(); <-memberDone }()

	type side struct {
		name   string
		url    string
		client *http.Client // nil: the shared one
		runs   []batchbench.Result
	}
	var sides []*side
	hafeURL, stopHafe, err := batchbench.Serve(fe.Handler())
	if err != nil {
		return err
	}
	defer stopHafe()
	sides = append(sides, &side{name: "hafe", url: hafeURL})
	catalog := hafesql.Builtin()
	plainURL, stopPlain, err := batchbench.Serve(batchbench.NewPlain(plainPool, catalog, batchbench.Pipelined))
	if err != nil {
		return err
	}
	defer stopPlain()
	sides = append(sides, &side{name: "plain", url: plainURL})
	if o.MTCP {
		for _, eager := range []bool{true, false} {
			name, id := "hafe-mtcp-lazy", "bench-mtcp-lazy"
			if eager {
				name, id = "hafe-mtcp-eager", "bench-mtcp-eager"
			}
			addr, stop, err := serveMTCP(ctx, url, hafePool, id, eager)
			if err != nil {
				return err
			}
			defer stop()
			d := &mtcp.Dialer{Servers: []string{addr}}
			hc := batchbench.NewClient(o.Clients)
			hc.Transport.(*http.Transport).DialContext = d.DialContext
			sides = append(sides, &side{name: name, url: "http://" + addr, client: hc})
		}
	}
	if o.Interactive {
		u, stop, err := batchbench.Serve(batchbench.NewPlain(plainPool, catalog, batchbench.Interactive))
		if err != nil {
			return err
		}
		defer stop()
		sides = append(sides, &side{name: "plain-interactive", url: u})
	}

	w := batchbench.Workload{Clients: o.Clients, BatchSize: o.BatchSize, Accounts: o.Accounts, Seed: o.Seed}
	client := batchbench.NewClient(o.Clients)
	fmt.Fprintf(stdout, "workload: %d clients, batches of %d transfers among %d accounts, %s per side per round, %d rounds, pool %d\n",
		o.Clients, o.BatchSize, o.Accounts, o.Duration, o.Rounds, o.PoolSize)
	run := func(s *side, batches int, d time.Duration) (batchbench.Result, error) {
		if err := batchbench.ResetAccounts(ctx, plainPool); err != nil {
			return batchbench.Result{}, err
		}
		sw := w
		sw.Keys = o.Keys && strings.HasPrefix(s.name, "hafe")
		hc := client
		if s.client != nil {
			hc = s.client
		}
		return batchbench.Run(ctx, hc, s.url, sw, batches, d)
	}
	// Warm up: connections, prepared statements, the Go runtime.
	for _, s := range sides {
		if _, err := run(s, 2*o.Clients, 0); err != nil {
			return fmt.Errorf("warm-up of %s: %w", s.name, err)
		}
	}
	for round := range o.Rounds {
		// Each round starts with another side, and every other one runs
		// backwards, so that no side always follows the same one.
		order := append(append([]*side(nil), sides[round%len(sides):]...), sides[:round%len(sides)]...)
		if round%2 == 1 {
			for i, j := 0, len(order)-1; i < j; i, j = i+1, j-1 {
				order[i], order[j] = order[j], order[i]
			}
		}
		for _, s := range order {
			r, err := run(s, 0, o.Duration)
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", round+1, s.name, err)
			}
			s.runs = append(s.runs, r)
			fmt.Fprintf(stdout, "round %d  %-18s %7.0f tx/s  p50 %6.1fms  p99 %6.1fms\n", round+1, s.name, r.TxPerSec(),
				float64(r.Quantile(0.5).Microseconds())/1000, float64(r.Quantile(0.99).Microseconds())/1000)
		}
	}
	var table []batchbench.Side
	for _, s := range sides {
		table = append(table, batchbench.Side{Name: s.name, Result: batchbench.Merge(s.runs...)})
	}
	fmt.Fprintln(stdout)
	fmt.Fprint(stdout, batchbench.Table(table...))
	ratio := table[0].Result.TxPerSec() / table[1].Result.TxPerSec()
	verdict := "meets"
	if ratio < 0.85 {
		verdict = "is below"
	}
	fmt.Fprintf(stdout, "\nhafe/plain throughput %.2fx %s the target of 0.85x\n", ratio, verdict)
	for _, s := range table[2:] {
		if !strings.HasPrefix(s.Name, "hafe-mtcp") {
			continue
		}
		r := s.Result.TxPerSec() / table[0].Result.TxPerSec()
		verdict := "meets"
		if r < 0.9 {
			verdict = "is below"
		}
		fmt.Fprintf(stdout, "%s/hafe (plain HTTP) throughput %.2fx %s the target of 0.9x\n", s.Name, r, verdict)
	}
	return nil
}

// serveMTCP runs a front-end of its own on pool, served over MTCP on a
// loopback port, as hafe serve --mtcp-listen does (eager mode saves the
// snapshots through a small pool of its own).
func serveMTCP(ctx context.Context, url string, pool *pgxpool.Pool, id string, eager bool) (addr string, stop func(), err error) {
	fe, err := frontend.New(pool, frontend.Config{ID: id}, nil)
	if err != nil {
		return "", nil, err
	}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	addr = raw.Addr().String()
	cfg := mtcp.ListenConfig{Self: addr, ClusterKey: []byte("bench batches cluster key, 32 b!")}
	closeStore := func() {}
	if eager {
		scfg, err := pgxpool.ParseConfig(url)
		if err != nil {
			raw.Close()
			return "", nil, err
		}
		scfg.MaxConns = 4
		backendext.ConfigurePool(scfg, id, "", time.Minute)
		sp, err := pgxpool.NewWithConfig(ctx, scfg)
		if err != nil {
			raw.Close()
			return "", nil, err
		}
		cfg.Store = backendext.NewSnapshotStore(sp, id)
		closeStore = sp.Close
	}
	ln := mtcp.NewListener(raw, cfg)
	memberCtx, stopMember := context.WithCancel(ctx)
	memberDone := make(chan struct{})
	go func() { fe.Run(memberCtx); close(memberDone) }()
	served := make(chan struct{})
	go func() { fe.ServeMTCP(ln); close(served) }()
	return addr, func() {
		ln.Close()
		<-served
		stopMember()
		<-memberDone
		closeStore()
	}, nil
}

// prepareDB installs hafe and the demo bank.
func prepareDB(ctx context.Context, url string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := backendext.Install(ctx, conn, backendext.InstallOptions{}, nil); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, hafesql.DemoSchema()); err != nil {
		return fmt.Errorf("demo schema: %w", err)
	}
	return nil
}
