package failbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"hafe.dev/hafe/client"
	"hafe.dev/hafe/internal/batchbench"
	"hafe.dev/hafe/mtcp"
)

// FailoverOptions are "hafe bench failover"'s settings.
type FailoverOptions struct {
	Cluster ClusterOptions
	// Kills per side (default 50).
	Kills int
	// BatchSize is the transfers per batch (default 1000).
	BatchSize int
	// KillAt: the serving front-end is killed when this line arrives
	// (default 100).
	KillAt int
	// MinBackoff and MaxBackoff of the plain-HTTP client (client
	// defaults when zero).
	MinBackoff, MaxBackoff time.Duration
	Seed                   uint64
	// Cold: do not warm a restarted front-end up. By default it gets one
	// small batch over each of MTCP and HTTP once ready, as a front-end
	// in service has open database connections (its pool, its snapshot
	// store's); a cold one opens them during the takeover.
	Cold bool
	// KeepAlive is the MTCP client's Triggers.KeepAlive (0: its default);
	// its trigger loop ticks at half of it.
	KeepAlive time.Duration
}

// Side names.
const (
	SideMTCP = "MTCP (eager)"
	SideHTTP = "plain HTTP + Idempotency-Key retry"
)

// Kill is what one kill measured.
type Kill struct {
	Side   string
	Victim string
	// Stall is the time from the SIGKILL to the end of the longest silence
	// of the stream after it: the next line the client saw that the
	// killed front-end had not already sent.
	Stall time.Duration
	// Gap is the median time between lines before the kill.
	Gap time.Duration
	// Takeover: from the kill to the successor's "batch taken over" log
	// line (0: not found).
	Takeover time.Duration
	// MTCP only: the client's migrations (the last one succeeded) and
	// when the last one's callback ran, relative to the kill.
	Migrations []mtcp.MigrationStats
	MigratedAt time.Duration
	// Server: the new server's "mtcp connection migrated" phases.
	ServerPhases *serverPhases
	// HTTP only: retries and how many were 409 (owner still alive).
	Retries, Busy int
	Attempts      int
}

type serverPhases struct {
	Mode                          string
	Prepare, WaitReply, Reinstate time.Duration
	At                            time.Duration // log time relative to the kill
}

// FailoverResult is a whole run.
type FailoverResult struct {
	Options FailoverOptions
	Kills   []Kill
}

func (o FailoverOptions) withDefaults() FailoverOptions {
	if o.Kills <= 0 {
		o.Kills = 50
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 1000
	}
	if o.KillAt <= 0 {
		o.KillAt = 100
	}
	if o.Cluster.Heartbeat <= 0 {
		o.Cluster.Heartbeat = 200 * time.Millisecond
	}
	if o.Cluster.OwnerLiveness <= 0 {
		o.Cluster.OwnerLiveness = time.Second
	}
	return o
}

// Check reports settings that cannot work.
func (o FailoverOptions) Check() error {
	switch {
	case o.Kills < 1:
		return errors.New("need --kills ≥ 1")
	case o.KillAt < 1 || o.KillAt >= o.BatchSize:
		return errors.New("need 1 ≤ --kill-at < --batch-size")
	case o.Cluster.Heartbeat <= 0 || o.Cluster.OwnerLiveness <= o.Cluster.Heartbeat:
		return errors.New("need --heartbeat > 0 and --owner-liveness > --heartbeat")
	case o.Cluster.FrontEnds != 0 && o.Cluster.FrontEnds < 2:
		return errors.New("need --front-ends ≥ 2")
	}
	return nil
}

// RunFailover kills the serving front-end of a running batch, alternately
// for a client over MTCP and one over plain HTTP, and restarts it.
func RunFailover(ctx context.Context, o FailoverOptions, progress io.Writer) (*FailoverResult, error) {
	o = o.withDefaults()
	if err := o.Check(); err != nil {
		return nil, err
	}
	o.Cluster.Log = progress
	c, err := startCluster(ctx, o.Cluster)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	res := &FailoverResult{Options: o}
	// Warm up both paths (connections, prepared statements) unkilled.
	for _, side := range []string{SideMTCP, SideHTTP} {
		if _, err := runOne(ctx, c, o, side, 0, -1, 0); err != nil {
			return nil, fmt.Errorf("warm-up over %s: %w", side, err)
		}
	}
	for i := range 2 * o.Kills {
		side := SideMTCP
		// Alternate, and swap the order every other pair.
		if (i%2 == 1) != (i/2%2 == 1) {
			side = SideHTTP
		}
		target := (i / 2) % len(c.fes)
		k, err := runOne(ctx, c, o, side, target, o.KillAt, uint64(i+1))
		if err != nil {
			return res, fmt.Errorf("kill %d (%s): %w", i+1, side, err)
		}
		res.Kills = append(res.Kills, *k)
		if progress != nil {
			fmt.Fprintf(progress, "kill %3d  %-36s %s  stall %7.1fms  %s\n", i+1, side, k.Victim, ms(k.Stall), k.detail())
		}
		victim := c.byID(k.Victim)
		if err := c.restart(ctx, victim); err != nil {
			return res, err
		}
		if !o.Cold {
			warm := o
			warm.BatchSize = 20
			for _, side := range []string{SideMTCP, SideHTTP} {
				if _, err := runOne(ctx, c, warm, side, slices.Index(c.fes, victim), -1, 0); err != nil {
					return res, fmt.Errorf("warm-up of %s over %s: %w", victim.id, side, err)
				}
			}
		}
	}
	return res, nil
}

// runOne submits one batch to front-end first over side and, when killAt
// > 0, kills the front-end serving it when line killAt arrives.
func runOne(ctx context.Context, c *cluster, o FailoverOptions, side string, first, killAt int, seed uint64) (*Kill, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	w := batchbench.Workload{BatchSize: o.BatchSize, Accounts: 100, Seed: o.Seed}
	body := w.Body(int(seed), 0)
	k := &Kill{Side: side}
	var (
		mu         sync.Mutex
		killTime   time.Time
		migratedAt time.Time
		arrivals   []time.Time
		before     []time.Time
		offsets    = map[string]int64{}
	)
	cfg := client.Config{MaxAttempts: 50, MinBackoff: o.MinBackoff, MaxBackoff: o.MaxBackoff}
	if side == SideMTCP {
		cfg.FrontEnds = c.mtcpAddrs(first)
		cfg.MTCP = &mtcp.Dialer{Triggers: mtcp.Triggers{KeepAlive: o.KeepAlive}, OnMigration: func(s mtcp.MigrationStats) {
			mu.Lock()
			defer mu.Unlock()
			k.Migrations = append(k.Migrations, s)
			if s.Err == nil {
				migratedAt = time.Now()
			}
		}}
	} else {
		cfg.FrontEnds = c.httpURLs(first)
		cfg.Observe = func(e client.Event) {
			if e.Kind != client.EventRetry {
				return
			}
			k.Retries++
			var api *client.APIError
			if errors.As(e.Err, &api) && api.Status == 409 {
				k.Busy++
			}
		}
	}
	cl, err := client.New(cfg)
	if err != nil {
		return nil, err
	}
	defer cl.CloseIdleConnections()
	sum, err := cl.Submit(ctx, client.Request{Body: body, OnLine: func(l client.Line) error {
		if l.Done {
			return nil
		}
		now := time.Now()
		if killAt <= 0 {
			return nil
		}
		if !killTime.IsZero() {
			arrivals = append(arrivals, now)
			return nil
		}
		before = append(before, now)
		if l.Seq < killAt {
			return nil
		}
		victim := c.byID(l.FrontEnd)
		if victim == nil {
			return fmt.Errorf("line from unknown front-end %q", l.FrontEnd)
		}
		for _, fe := range c.fes {
			offsets[fe.id] = fe.logSize()
		}
		k.Victim = victim.id
		killTime = time.Now()
		victim.kill()
		return nil
	}})
	if err != nil {
		return nil, fmt.Errorf("submit: %w (%d of %d lines)", err, sum.Transactions, o.BatchSize)
	}
	if !sum.Done || sum.Transactions != o.BatchSize {
		return nil, fmt.Errorf("batch incomplete: %d of %d lines", sum.Transactions, o.BatchSize)
	}
	k.Attempts = sum.Attempts
	if killAt <= 0 {
		return k, nil
	}
	if killTime.IsZero() {
		return nil, errors.New("the batch ended before the kill")
	}
	// The stall ends with the longest silence after the kill: lines the
	// killed front-end had sent before it died arrive first, at once.
	prev, best := killTime, time.Duration(-1)
	for _, a := range arrivals {
		if g := a.Sub(prev); g > best {
			best, k.Stall = g, a.Sub(killTime)
		}
		prev = a
	}
	var gaps []time.Duration
	for i := 1; i < len(before); i++ {
		gaps = append(gaps, before[i].Sub(before[i-1]))
	}
	k.Gap = quantile(gaps, 0.5)
	mu.Lock()
	if !migratedAt.IsZero() {
		k.MigratedAt = migratedAt.Sub(killTime)
	}
	var connID string
	if n := len(k.Migrations); n > 0 {
		connID = k.Migrations[n-1].ConnID.String()
	}
	mu.Unlock()
	// The successor's log lines: wait a moment for them to be written.
	time.Sleep(50 * time.Millisecond)
	for _, fe := range c.fes {
		if fe.id == k.Victim {
			continue
		}
		for _, l := range fe.readLog(offsets[fe.id]) {
			switch {
			// "batch taken over", or after a migration "batch taken over
			// after its connection moved: <what it found>".
			case strings.HasPrefix(l.Msg, "batch taken over") && l.str("batch") == sum.BatchID && k.Takeover == 0:
				k.Takeover = l.Time.Sub(killTime)
			case l.Msg == "mtcp connection migrated" && l.str("role") == "new_server" && connID != "" && l.str("conn") == connID:
				k.ServerPhases = &serverPhases{Mode: l.str("mode"), Prepare: l.micros("prepare_us"),
					WaitReply: l.micros("wait_us"), Reinstate: l.micros("reinstate_us"), At: l.Time.Sub(killTime)}
			}
		}
	}
	return k, nil
}

// detail is where the stall went, for the progress line.
func (k *Kill) detail() string {
	if k.Side == SideHTTP {
		return fmt.Sprintf("takeover %.1fms, retries %d (%d busy)", ms(k.Takeover), k.Retries, k.Busy)
	}
	s := fmt.Sprintf("migrated %.1fms, takeover %.1fms, attempts %d", ms(k.MigratedAt), ms(k.Takeover), len(k.Migrations))
	if n := len(k.Migrations); n > 0 {
		m := k.Migrations[n-1]
		s += fmt.Sprintf(" (initiate %.1f wait %.1f ms)", ms(m.Initiate), ms(m.Wait))
	}
	if p := k.ServerPhases; p != nil {
		s += fmt.Sprintf(", server %s wait %.1fms", p.Mode, ms(p.WaitReply))
	}
	return s
}

func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[int(q*float64(len(s)-1)+0.5)]
}

func mean(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	var t time.Duration
	for _, d := range ds {
		t += d
	}
	return t / time.Duration(len(ds))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Target is the goal for MTCP's p99 stall after a kill.
const Target = 50 * time.Millisecond

func (r *FailoverResult) side(name string) []Kill {
	var out []Kill
	for _, k := range r.Kills {
		if k.Side == name {
			out = append(out, k)
		}
	}
	return out
}

// Report prints the stalls side by side, the MTCP phases and a verdict.
func (r *FailoverResult) Report(w io.Writer) {
	o := r.Options
	fmt.Fprintf(w, "\n%d front-ends (hafe serve processes, MTCP eager), --heartbeat %v, --owner-liveness %v, the same on both sides;\n",
		max(o.Cluster.FrontEnds, 3), o.Cluster.Heartbeat, o.Cluster.OwnerLiveness)
	mb, xb := o.MinBackoff, o.MaxBackoff
	if mb == 0 {
		mb = 100 * time.Millisecond
	}
	if xb == 0 {
		xb = 5 * time.Second
	}
	warm := "each restarted front-end is warmed up by a small batch over MTCP and HTTP"
	if o.Cold {
		warm = "restarted front-ends are not warmed up (--cold): their database connections open during takeovers"
	}
	fmt.Fprintf(w, "%s;\n", warm)
	fmt.Fprintf(w, "batches of %d transfers; SIGKILL of the serving front-end at line %d; %d kills per side, alternating;\n"+
		"plain HTTP client: retry with the same Idempotency-Key on the next front-end, backoff %v..%v (Retry-After honoured)\n\n",
		o.BatchSize, o.KillAt, len(r.side(SideMTCP)), mb, xb)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "stall: kill → next new line\tp50\tp99\tmax\tmean\tline gap p50\tkill → takeover p50\tp99\t")
	stalls := map[string][]time.Duration{}
	for _, name := range []string{SideMTCP, SideHTTP} {
		var st, gap, tk []time.Duration
		for _, k := range r.side(name) {
			st = append(st, k.Stall)
			gap = append(gap, k.Gap)
			if k.Takeover > 0 {
				tk = append(tk, k.Takeover)
			}
		}
		stalls[name] = st
		fmt.Fprintf(tw, "%s\t%.1fms\t%.1fms\t%.1fms\t%.1fms\t%.2fms\t%.1fms\t%.1fms\t\n", name, ms(quantile(st, 0.5)), ms(quantile(st, 0.99)),
			ms(quantile(st, 1)), ms(mean(st)), ms(quantile(gap, 0.5)), ms(quantile(tk, 0.5)), ms(quantile(tk, 0.99)))
	}
	tw.Flush()
	m, h := stalls[SideMTCP], stalls[SideHTTP]
	var over []string
	for _, k := range r.side(SideMTCP) {
		if k.Stall > Target {
			over = append(over, fmt.Sprintf("%.0fms (taken over at %.0fms)", ms(k.Stall), ms(k.Takeover)))
		}
	}
	if len(over) > 0 {
		fmt.Fprintf(w, "MTCP stalls over %v: %d of %d: %s\n", Target, len(over), len(m), strings.Join(over, ", "))
	}
	fmt.Fprintf(w, "MTCP/HTTP stall: p50 %s, p99 %s\n", batchbench.Ratio(float64(quantile(m, 0.5)), float64(quantile(h, 0.5))),
		batchbench.Ratio(float64(quantile(m, 0.99)), float64(quantile(h, 0.99))))

	// Where MTCP's stall goes.
	var detect, initiate, wait, complete, after, takeover, failed []time.Duration
	var sp, swait, srein []time.Duration
	modes := map[string]int{}
	nFailed := 0
	for _, k := range r.side(SideMTCP) {
		n := len(k.Migrations)
		if n == 0 {
			continue
		}
		last := k.Migrations[n-1]
		for _, s := range k.Migrations[:n-1] {
			nFailed++
			failed = append(failed, s.Initiate+s.Wait)
		}
		start := k.MigratedAt - last.Initiate - last.Wait - last.Complete
		detect = append(detect, start)
		initiate = append(initiate, last.Initiate)
		wait = append(wait, last.Wait)
		complete = append(complete, last.Complete)
		after = append(after, k.Stall-k.MigratedAt)
		if k.Takeover > 0 {
			takeover = append(takeover, k.Takeover-k.MigratedAt)
		}
		if p := k.ServerPhases; p != nil {
			modes[p.Mode]++
			sp = append(sp, p.Prepare)
			swait = append(swait, p.WaitReply)
			srein = append(srein, p.Reinstate)
		}
	}
	fmt.Fprintf(w, "\nMTCP stall by phase (client clock; server phases from the successor's log)\n")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\tp50\tp99\tmax\t")
	row := func(name string, ds []time.Duration) {
		if len(ds) == 0 {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t\n", name)
			return
		}
		fmt.Fprintf(tw, "%s\t%.2fms\t%.2fms\t%.2fms\t\n", name, ms(quantile(ds, 0.5)), ms(quantile(ds, 0.99)), ms(quantile(ds, 1)))
	}
	row("detect: kill → migration starts", detect)
	row("failed migration attempts before", failed)
	row("client initiate (dial, MIGRATE)", initiate)
	row("client wait (until ACCEPTED)", wait)
	row("  server prepare request", sp)
	row("  server wait reply (origin/store)", swait)
	row("  server reinstate", srein)
	row("client complete", complete)
	row("migrated → batch taken over", takeover)
	row("migrated → next new line", after)
	tw.Flush()
	var ms2 []string
	for m, n := range modes {
		ms2 = append(ms2, fmt.Sprintf("%s %d", m, n))
	}
	slices.Sort(ms2)
	fmt.Fprintf(w, "state source on the new server: %s; failed migration attempts: %d\n", strings.Join(ms2, ", "), nFailed)
	var busy, retries int
	for _, k := range r.side(SideHTTP) {
		busy += k.Busy
		retries += k.Retries
	}
	fmt.Fprintf(w, "plain HTTP: %d retries in all, %d of them 409 (the killed owner's heartbeat not yet %v old)\n", retries, busy, o.Cluster.OwnerLiveness)
	p99 := quantile(m, 0.99)
	verdict := "meets"
	if p99 > Target {
		verdict = "misses"
	}
	fmt.Fprintf(w, "\nMTCP p99 stall %.1fms %s the target of %v\n", ms(p99), verdict, Target)
}
