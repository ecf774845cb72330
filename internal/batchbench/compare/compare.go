// Package compare is "hafe bench batches": the same workload through a hafe
// front-end and through plain handlers, side by side in one run.
package compare

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
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
	// TLS adds the same front-ends with TLS on every hop: HTTPS (and MTCP
	// paths over TLS) from the clients, TLS with a verified certificate
	// to PostgreSQL (a throwaway server then runs with ssl on; a --db
	// server is reached as its URL says).
	TLS bool
}

// Run runs the same workload through a hafe front-end and through the
// plain handlers, in alternating rounds, and prints the ratios.
func Run(ctx context.Context, o Options, stdout, stderr io.Writer) error {
	url := o.DB
	var bt *benchTLS
	if o.TLS {
		var err error
		if bt, err = newBenchTLS(); err != nil {
			return err
		}
	}
	if url == "" {
		fmt.Fprintln(stderr, "starting a throwaway PostgreSQL…")
		var popts pgtemp.Options
		if bt != nil {
			popts.TLSCert, popts.TLSKey = bt.certPEM, bt.keyPEM
		}
		srv, err := pgtemp.Start(ctx, popts)
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
	newPool := func(id string, withTLS bool) (*pgxpool.Pool, error) {
		cfg, err := poolConfig(url, withTLS && o.DB == "", bt)
		if err != nil {
			return nil, err
		}
		cfg.MaxConns = int32(o.PoolSize)
		backendext.ConfigurePool(cfg, id, "", time.Minute)
		return pgxpool.NewWithConfig(ctx, cfg)
	}
	hafePool, err := newPool("bench-hafe", false)
	if err != nil {
		return err
	}
	defer hafePool.Close()
	plainPool, err := newPool("bench-plain", false)
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
	var tlsPool *pgxpool.Pool
	if bt != nil {
		// Its own front-end and pool: every hop of this side is TLS.
		if tlsPool, err = newPool("bench-hafe-tls", true); err != nil {
			return err
		}
		defer tlsPool.Close()
		tfe, err := frontend.New(tlsPool, frontend.Config{ID: "bench-hafe-tls"}, nil)
		if err != nil {
			return err
		}
		tctx, stopT := context.WithCancel(ctx)
		tdone := make(chan struct{})
		go func() { tfe.Run(tctx); close(tdone) }()
		defer func() { stopT(); <-tdone }()
		u, stop, err := serveHTTPS(tfe.Handler(), bt)
		if err != nil {
			return err
		}
		defer stop()
		hc := batchbench.NewClient(o.Clients)
		hc.Transport.(*http.Transport).TLSClientConfig = bt.client()
		sides = append(sides, &side{name: "hafe-tls", url: u, client: hc})
		// The plain side's front-end over HTTPS: the client hop alone.
		u, stop, err = serveHTTPS(fe.Handler(), bt)
		if err != nil {
			return err
		}
		defer stop()
		sides = append(sides, &side{name: "hafe-https", url: u, client: hc})
	}
	if o.MTCP {
		for _, eager := range []bool{true, false} {
			for _, withTLS := range []bool{false, true} {
				if withTLS && (bt == nil || !eager) {
					continue
				}
				name, id := "hafe-mtcp-lazy", "bench-mtcp-lazy"
				if eager {
					name, id = "hafe-mtcp-eager", "bench-mtcp-eager"
				}
				pool, sbt := hafePool, (*benchTLS)(nil)
				if withTLS {
					name, id, pool, sbt = name+"-tls", id+"-tls", tlsPool, bt
				}
				addr, stop, err := serveMTCP(ctx, url, pool, id, eager, sbt, o.DB == "")
				if err != nil {
					return err
				}
				defer stop()
				d := &mtcp.Dialer{Servers: []string{addr}}
				if sbt != nil {
					d.TLSConfig = sbt.client()
				}
				hc := batchbench.NewClient(o.Clients)
				hc.Transport.(*http.Transport).DialContext = d.DialContext
				sides = append(sides, &side{name: name, url: "http://" + addr, client: hc})
			}
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
	// TLS against the same side without it: over the whole run, and the
	// median of each round's ratio (both measured minutes apart at most,
	// so a machine whose load drifts skews it less).
	byName := map[string]batchbench.Result{}
	runs := map[string][]batchbench.Result{}
	for _, s := range table {
		byName[s.Name] = s.Result
	}
	for _, s := range sides {
		runs[s.name] = s.runs
	}
	for _, p := range []struct{ tls, base, what string }{
		{"hafe-tls", "hafe", "TLS on every hop / none"},
		{"hafe-https", "hafe", "HTTPS, the client hop alone / none"},
		{"hafe-mtcp-eager-tls", "hafe-mtcp-eager", "TLS on every hop / none"},
	} {
		t, ok := byName[p.tls]
		if !ok {
			continue
		}
		r := t.TxPerSec() / byName[p.base].TxPerSec()
		verdict := "meets"
		if r < 0.9 {
			verdict = "is below"
		}
		var per []float64
		for i, tr := range runs[p.tls] {
			per = append(per, tr.TxPerSec()/runs[p.base][i].TxPerSec())
		}
		slices.Sort(per)
		median := (per[(len(per)-1)/2] + per[len(per)/2]) / 2
		fmt.Fprintf(stdout, "%s/%s (%s) throughput %.2fx %s the target of 0.9x; per round %.2f, median %.2fx\n",
			p.tls, p.base, p.what, r, verdict, per, median)
	}
	return nil
}

// poolConfig is a pool's configuration for url; withTLS makes it reach the
// throwaway server over TLS, checking its certificate as
// sslmode=verify-full does.
func poolConfig(url string, withTLS bool, bt *benchTLS) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("--db: %w", err)
	}
	if withTLS {
		cfg.ConnConfig.TLSConfig = bt.client()
		cfg.ConnConfig.Fallbacks = nil
	}
	return cfg, nil
}

// serveHTTPS serves h over HTTPS on a loopback port, as hafe serve
// --tls-cert does.
func serveHTTPS(h http.Handler, bt *benchTLS) (url string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(tls.NewListener(ln, bt.server()))
	return "https://" + ln.Addr().String(), func() { srv.Close() }, nil
}

// serveMTCP runs a front-end of its own on pool, served over MTCP on a
// loopback port, as hafe serve --mtcp-listen does (eager mode saves the
// snapshots through a small pool of its own).
func serveMTCP(ctx context.Context, url string, pool *pgxpool.Pool, id string, eager bool, bt *benchTLS, throwaway bool) (addr string, stop func(), err error) {
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
	if bt != nil {
		cfg.TLSConfig = bt.server()
	}
	closeStore := func() {}
	if eager {
		scfg, err := poolConfig(url, bt != nil && throwaway, bt)
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
