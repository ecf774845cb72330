package mtcpbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"hafe.dev/hafe/mtcp"
)

// MigrateConfig configures RunMigrate. Zero fields take the defaults noted.
type MigrateConfig struct {
	// Runs is how many measured migrations each variant averages. Default 200.
	Runs int
	// Sizes are the application state sizes in bytes. Default 0, 5 kB, 10 kB.
	Sizes []int
	// Warmup is how many unmeasured migrations each connection makes first
	// (peer channels, the Go runtime). Default 10.
	Warmup int
	// Delay, if set, runs everything on a simulated network whose links
	// add this one-way delay, instead of the kernel's loopback.
	Delay time.Duration
}

func (c *MigrateConfig) fill() {
	if c.Runs <= 0 {
		c.Runs = 200
	}
	if len(c.Sizes) == 0 {
		c.Sizes = []int{0, 5 << 10, 10 << 10}
	}
	if c.Warmup <= 0 {
		c.Warmup = 10
	}
}

// Phases are mean durations of one migration's phases, per party (the
// seed's breakdown, as docs/mtcp.md lists it).
type Phases struct {
	Initiate, Wait, Complete             time.Duration // client
	PrepareRequest, WaitReply, Reinstate time.Duration // new server
	PrepareReply                         time.Duration // origin
}

// Variant is one kind of migration at one state size.
type Variant struct {
	StateBytes int
	Standby    bool // make-before-break: a warm path carried the MIGRATE
	// FetchOnly: the client sends no PREPARE, so the new server fetches
	// the state from the origin after the MIGRATE (the seed's protocol).
	FetchOnly bool
	// AlwaysPrepare: the client sends PREPARE whatever its path's RTT;
	// by default it does only from mtcp.Dialer.PrepareMinRTT on.
	AlwaysPrepare bool
	Phases        Phases
	// Total is the client's mean time from starting the migration until the
	// stream is reattached (initiate + wait + complete); Median its median.
	Total, Median time.Duration
	// StandbyUsed counts the runs the warm path actually carried.
	StandbyUsed int
	// PrepareSent counts the runs whose client sent PREPARE; PushedUsed
	// those whose new server took the state the origin pushed after it.
	PrepareSent, PushedUsed int
	// Transferred is the mean state the origin handed over (snapshot, input
	// log, unacknowledged output), in bytes.
	Transferred int
}

// MigrateResult is RunMigrate's measurement.
type MigrateResult struct {
	Runs    int
	Network string // where it ran
	// Baseline is the mean of a plain TCP connect plus a one-byte round
	// trip on loopback, measured interleaved with the migrations.
	Baseline, BaselineMedian time.Duration
	// RTT is the mean one-byte round trip on an established TCP
	// connection, measured interleaved with the migrations (so under the
	// same conditions: goroutines parked, caches cold); HotRTT is the same
	// in a tight loop, the best case.
	RTT, RTTMedian, HotRTT time.Duration
	Lazy                   []Variant // by size: the default client (PREPARE by RTT)
	Prepared               []Variant // by size: PREPARE always, the state pushed during the dial
	FetchOnly              []Variant // by size: no PREPARE, the new server fetches
	Standby                []Variant // by size
	Failures               int       // migrations that failed and were retried
}

// variantRun is one connection being migrated back and forth.
type variantRun struct {
	v     *Variant
	conn  *mtcp.Conn
	total []time.Duration
	// sums of the servers' phases, filled by the OnMigration hooks
	prepReq, waitReply, reinstate, prepReply time.Duration
	serverReports                            int
	transferred                              int
	pushed                                   int
}

// serveStateEcho is the benchmark's server application. On a new
// connection the client's first byte gives the state size in kB; the state
// is exported, then every byte read is echoed and the state exported
// again, so the input log stays empty and a migration transfers just the
// state.
func serveStateEcho(c *mtcp.Conn) {
	state, ok := c.ImportState()
	buf := make([]byte, 4096)
	if !ok {
		if _, err := io.ReadFull(c, buf[:1]); err != nil {
			return
		}
		state = make([]byte, int(buf[0])<<10)
		for i := range state {
			state[i] = byte(i)
		}
		if err := c.ExportState(state); err != nil {
			return
		}
	}
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
			if err := c.ExportState(state); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// RunMigrate measures one-way lazy migrations between two servers on
// loopback, with and without a warm standby path, for each state size,
// interleaved round by round, in a shuffled order, with the connect+RTT
// baseline.
func RunMigrate(ctx context.Context, cfg MigrateConfig) (*MigrateResult, error) {
	cfg.fill()
	for _, s := range cfg.Sizes {
		if s%1024 != 0 || s < 0 || s > 255<<10 {
			return nil, fmt.Errorf("state size %d: want a multiple of 1 kB below 256 kB", s)
		}
	}
	var tr transport = loopback{}
	if cfg.Delay > 0 {
		sim, err := newSimulated(2, cfg.Delay)
		if err != nil {
			return nil, err
		}
		defer sim.Close()
		tr = sim
	}
	res := &MigrateResult{Runs: cfg.Runs, Network: tr.String()}
	var runs []*variantRun
	for _, kind := range []Variant{{}, {AlwaysPrepare: true}, {FetchOnly: true}, {Standby: true}} {
		for _, size := range cfg.Sizes {
			v := kind
			v.StateBytes = size
			runs = append(runs, &variantRun{v: &v})
		}
	}
	var (
		mu        sync.Mutex
		byConn    = map[mtcp.ConnID]*variantRun{}
		measuring bool
	)
	onMigration := func(s mtcp.MigrationStats) {
		mu.Lock()
		defer mu.Unlock()
		r := byConn[s.ConnID]
		if r == nil || !measuring || s.Err != nil {
			return
		}
		switch s.Role {
		case mtcp.RoleNewServer:
			r.prepReq += s.PrepareRequest
			r.waitReply += s.WaitReply
			r.reinstate += s.Reinstate
			r.transferred += s.StateBytes
			if s.Pushed {
				r.pushed++
			}
		case mtcp.RoleOrigin:
			r.prepReply += s.PrepareReply
		default:
			return
		}
		r.serverReports++
	}
	cl, err := newClusterOn(tr, 2, func(_ int, c *mtcp.ListenConfig) { c.OnMigration = onMigration },
		func(_ int, c *mtcp.Conn) { serveStateEcho(c) })
	if err != nil {
		return nil, err
	}
	defer cl.Close()

	echo, err := newTCPEcho(tr)
	if err != nil {
		return nil, err
	}
	defer echo.Close()

	for _, r := range runs {
		d := &mtcp.Dialer{Servers: cl.addrs, Standby: r.v.Standby, NoPrepare: r.v.FetchOnly, DialPath: tr.dialFrom(-1),
			Triggers: mtcp.Triggers{KeepAlive: time.Minute, PathTimeout: time.Hour}}
		if r.v.AlwaysPrepare {
			d.PrepareMinRTT = -1
		}
		c, err := d.DialMTCP(ctx, cl.addrs[0])
		if err != nil {
			return nil, err
		}
		defer c.Close()
		r.conn = c
		if _, err := c.Write([]byte{byte(r.v.StateBytes >> 10)}); err != nil {
			return nil, err
		}
		if err := roundTrip(c); err != nil {
			return nil, err
		}
		mu.Lock()
		byConn[c.ID()] = r
		mu.Unlock()
	}
	migrate := func(r *variantRun, i int) (mtcp.MigrationStats, error) {
		target := cl.addrs[(i+1)%2]
		if r.v.Standby {
			// The warm path is opened in the background after the last
			// migration; the variant measures migrations that use it.
			for k := 0; k < 1000 && r.conn.Standby() != target; k++ {
				time.Sleep(100 * time.Microsecond)
			}
		}
		var err error
		for try := 0; try < 3; try++ {
			if err = r.conn.Migrate(ctx, target); err == nil {
				break
			}
			res.Failures++
		}
		if err != nil {
			return mtcp.MigrationStats{}, fmt.Errorf("migrate to %s: %w", target, err)
		}
		s := r.conn.LastMigration()
		// The stream works, and the new server has snapshotted again.
		if err := roundTrip(r.conn); err != nil {
			return s, err
		}
		if r.v.Standby {
			// Let the next warm path open now rather than during the
			// next measurement.
			back := cl.addrs[i%2]
			for k := 0; k < 1000 && r.conn.Standby() != back; k++ {
				time.Sleep(100 * time.Microsecond)
			}
		}
		return s, nil
	}
	for i := 0; i < cfg.Warmup; i++ {
		if _, err := echo.connectRTT(); err != nil {
			return nil, err
		}
		for _, r := range runs {
			if _, err := migrate(r, i); err != nil {
				return nil, fmt.Errorf("warm-up: %w", err)
			}
		}
	}
	// Both servers are back at even parity: connection on server 0.
	if cfg.Warmup%2 == 1 {
		for _, r := range runs {
			if _, err := migrate(r, cfg.Warmup); err != nil {
				return nil, fmt.Errorf("warm-up: %w", err)
			}
		}
	}
	// Late reports of the warm-up must not count.
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	measuring = true
	mu.Unlock()

	rttConn, err := echo.dial()
	if err != nil {
		return nil, err
	}
	defer rttConn.Close()
	var base, rtts []time.Duration
	order := rand.New(rand.NewPCG(1, 2))
	baseline := func() error {
		b, err := echo.connectRTT()
		if err != nil {
			return err
		}
		base = append(base, b)
		t0 := time.Now()
		if err := roundTrip(rttConn); err != nil {
			return err
		}
		rtts = append(rtts, time.Since(t0))
		return nil
	}
	for i := 0; i < cfg.Runs; i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		// Each round takes the steps (the baseline is step 0) in a new
		// order, so that whatever one measurement leaves behind (a path
		// closing, garbage) falls on every other one alike.
		for _, step := range order.Perm(len(runs) + 1) {
			if step == 0 {
				if err := baseline(); err != nil {
					return nil, err
				}
				continue
			}
			r := runs[step-1]
			s, err := migrate(r, i)
			if err != nil {
				return nil, err
			}
			r.v.Phases.Initiate += s.Initiate
			r.v.Phases.Wait += s.Wait
			r.v.Phases.Complete += s.Complete
			r.total = append(r.total, s.Initiate+s.Wait+s.Complete)
			if s.Standby {
				r.v.StandbyUsed++
			}
			if s.Pushed {
				r.v.PrepareSent++
			}
		}
	}
	res.RTT, res.RTTMedian = mean(rtts), median(rtts)
	if res.HotRTT, err = echo.meanRTT(cfg.Runs); err != nil {
		return nil, err
	}
	// The origin reports after it answered; give stragglers a moment.
	want := 2 * cfg.Runs
	for k := 0; k < 200; k++ {
		mu.Lock()
		done := true
		for _, r := range runs {
			done = done && r.serverReports >= want
		}
		mu.Unlock()
		if done {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	measuring = false
	mu.Unlock()

	res.Baseline, res.BaselineMedian = mean(base), median(base)
	n := time.Duration(cfg.Runs)
	for _, r := range runs {
		p := &r.v.Phases
		p.Initiate /= n
		p.Wait /= n
		p.Complete /= n
		p.PrepareRequest = r.prepReq / n
		p.WaitReply = r.waitReply / n
		p.Reinstate = r.reinstate / n
		p.PrepareReply = r.prepReply / n
		r.v.Transferred = r.transferred / cfg.Runs
		r.v.PushedUsed = r.pushed
		r.v.Total, r.v.Median = mean(r.total), median(r.total)
		switch {
		case r.v.Standby:
			res.Standby = append(res.Standby, *r.v)
		case r.v.FetchOnly:
			res.FetchOnly = append(res.FetchOnly, *r.v)
		case r.v.AlwaysPrepare:
			res.Prepared = append(res.Prepared, *r.v)
		default:
			res.Lazy = append(res.Lazy, *r.v)
		}
	}
	return res, nil
}

func roundTrip(c net.Conn) error {
	one := []byte{'x'}
	if _, err := c.Write(one); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, one); err != nil {
		return err
	}
	if one[0] != 'x' {
		return errors.New("echo returned a different byte")
	}
	return nil
}

// tcpEcho is the baseline's server: plain TCP, echoing, on the host after
// the servers.
type tcpEcho struct {
	ln     net.Listener
	addr   string
	dialer dialFunc
	wg     sync.WaitGroup
}

func newTCPEcho(tr transport) (*tcpEcho, error) {
	ln, addr, err := tr.listen(2, true)
	if err != nil {
		return nil, err
	}
	e := &tcpEcho{ln: ln, addr: addr, dialer: tr.dialFrom(-1)}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				defer nc.Close()
				_, _ = io.Copy(nc, nc)
			}()
		}
	}()
	return e, nil
}

func (e *tcpEcho) dial() (net.Conn, error) {
	if e.dialer == nil {
		return net.Dial("tcp", e.addr)
	}
	return e.dialer(context.Background(), e.addr)
}

// connectRTT times a TCP connect plus a one-byte round trip.
func (e *tcpEcho) connectRTT() (time.Duration, error) {
	t0 := time.Now()
	nc, err := e.dial()
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	if err := roundTrip(nc); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

// meanRTT times n one-byte round trips on one established connection.
func (e *tcpEcho) meanRTT(n int) (time.Duration, error) {
	nc, err := e.dial()
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	if err := roundTrip(nc); err != nil {
		return 0, err
	}
	t0 := time.Now()
	for range n {
		if err := roundTrip(nc); err != nil {
			return 0, err
		}
	}
	return time.Since(t0) / time.Duration(n), nil
}

func (e *tcpEcho) Close() error {
	err := e.ln.Close()
	e.wg.Wait()
	return err
}

func mean(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// Table renders the result like the seed's table: phases by party, one
// column per state size, then totals, the baseline and the ratios.
func (r *MigrateResult) Table() string {
	var b strings.Builder
	us := func(d time.Duration) string { return fmt.Sprintf("%9.1f", float64(d.Nanoseconds())/1000) }
	header := func(title string, vs []Variant) {
		fmt.Fprintf(&b, "%-34s", title)
		for _, v := range vs {
			fmt.Fprintf(&b, "%9s", fmt.Sprintf("%d kB", v.StateBytes>>10))
		}
		b.WriteString("\n")
	}
	row := func(party, phase string, vs []Variant, f func(Variant) string) {
		fmt.Fprintf(&b, "%-12s%-22s", party, phase)
		for _, v := range vs {
			b.WriteString(f(v))
		}
		b.WriteString("\n")
	}
	phaseRows := func(vs []Variant) {
		row("client", "initiate", vs, func(v Variant) string { return us(v.Phases.Initiate) })
		row("", "wait", vs, func(v Variant) string { return us(v.Phases.Wait) })
		row("", "complete", vs, func(v Variant) string { return us(v.Phases.Complete) })
		row("new server", "prepare request", vs, func(v Variant) string { return us(v.Phases.PrepareRequest) })
		row("", "wait reply", vs, func(v Variant) string { return us(v.Phases.WaitReply) })
		row("", "reinstate", vs, func(v Variant) string { return us(v.Phases.Reinstate) })
		row("origin", "prepare reply", vs, func(v Variant) string { return us(v.Phases.PrepareReply) })
		row("migration", "total (client, mean)", vs, func(v Variant) string { return us(v.Total) })
		row("", "total (client, median)", vs, func(v Variant) string { return us(v.Median) })
		row("", "state transferred (B)", vs, func(v Variant) string { return fmt.Sprintf("%9d", v.Transferred) })
	}
	lazyRows := func(vs []Variant) {
		header("state size", vs)
		phaseRows(vs)
		row("", "PREPARE sent", vs, func(v Variant) string { return fmt.Sprintf("%9s", fmt.Sprintf("%d/%d", v.PrepareSent, r.Runs)) })
		row("", "state pushed", vs, func(v Variant) string { return fmt.Sprintf("%9s", fmt.Sprintf("%d/%d", v.PushedUsed, r.Runs)) })
		row("baseline", "TCP connect + 1 RTT", vs, func(Variant) string { return us(r.Baseline) })
		row("ratio", "migration / baseline", vs, func(v Variant) string { return fmt.Sprintf("%8.2fx", ratio(v.Total, r.Baseline)) })
		row("", "medians' ratio", vs, func(v Variant) string { return fmt.Sprintf("%8.2fx", ratio(v.Median, r.BaselineMedian)) })
	}
	fmt.Fprintf(&b, "One-way lazy migration between two servers, mean of %d runs, µs\non %s\n", r.Runs, r.Network)
	b.WriteString("the default client: it sends PREPARE on the old path when that path's RTT is at least\n")
	b.WriteString("mtcp.Dialer.PrepareMinRTT (100 µs), so that the origin pushes the state while it dials;\n")
	b.WriteString("on shorter paths the new server fetches the state after the MIGRATE\n\n")
	lazyRows(r.Lazy)
	if len(r.Prepared) > 0 {
		fmt.Fprintf(&b, "\nLazy migration, PREPARE whatever the RTT (the origin pushes the state during the dial), mean of %d runs, µs\n\n", r.Runs)
		lazyRows(r.Prepared)
	}
	if len(r.FetchOnly) > 0 {
		fmt.Fprintf(&b, "\nLazy migration without PREPARE (the new server fetches the state after the MIGRATE), mean of %d runs, µs\n\n", r.Runs)
		lazyRows(r.FetchOnly)
	}
	if len(r.Standby) > 0 {
		fmt.Fprintf(&b, "\nWarm standby (make-before-break), mean of %d runs, µs\n\n", r.Runs)
		header("state size", r.Standby)
		phaseRows(r.Standby)
		row("", "standby path used", r.Standby, func(v Variant) string { return fmt.Sprintf("%9s", fmt.Sprintf("%d/%d", v.StandbyUsed, r.Runs)) })
		row("baseline", "TCP round trip (RTT)", r.Standby, func(Variant) string { return us(r.RTT) })
		row("ratio", "migration / RTT", r.Standby, func(v Variant) string { return fmt.Sprintf("%8.2fx", ratio(v.Total, r.RTT)) })
		row("", "medians' ratio", r.Standby, func(v Variant) string { return fmt.Sprintf("%8.2fx", ratio(v.Median, r.RTTMedian)) })
		row("", "migration / baseline", r.Standby, func(v Variant) string { return fmt.Sprintf("%8.2fx", ratio(v.Total, r.Baseline)) })
	}
	fmt.Fprintf(&b, "\nbaseline TCP connect + 1 RTT: mean %.1f µs, median %.1f µs\n",
		float64(r.Baseline.Nanoseconds())/1000, float64(r.BaselineMedian.Nanoseconds())/1000)
	fmt.Fprintf(&b, "TCP round trip on an open connection: mean %.1f µs, median %.1f µs interleaved with the migrations, %.1f µs back to back\n",
		float64(r.RTT.Nanoseconds())/1000, float64(r.RTTMedian.Nanoseconds())/1000, float64(r.HotRTT.Nanoseconds())/1000)
	b.WriteString("verdicts below take the worse of the ratio of means and the ratio of medians\n")
	if r.Failures > 0 {
		fmt.Fprintf(&b, "%d migration attempts failed and were retried\n", r.Failures)
	}
	return b.String()
}

// Verdicts compares the result with the targets of issue 3. Each figure
// is the worse of the ratio of means and the ratio of medians: on a shared
// machine a few preempted runs can move a mean either way.
func (r *MigrateResult) Verdicts() []Verdict {
	var vs []Verdict
	for _, v := range r.Lazy {
		limit := 0.0
		switch v.StateBytes {
		case 0:
			limit = 1.5
		case 10 << 10:
			limit = 1.7
		default:
			continue
		}
		vs = append(vs, Verdict{
			What:   fmt.Sprintf("lazy migration, %d kB state / TCP connect+RTT", v.StateBytes>>10),
			Value:  max(ratio(v.Total, r.Baseline), ratio(v.Median, r.BaselineMedian)),
			Target: limit, AtMost: true, Unit: "x",
		})
	}
	for _, v := range r.Standby {
		vs = append(vs, Verdict{
			What:   fmt.Sprintf("warm-standby migration, %d kB state, in round trips", v.StateBytes>>10),
			Value:  max(ratio(v.Total, r.RTT), ratio(v.Median, r.RTTMedian)),
			Target: 3, AtMost: true, Unit: " RTT",
		})
	}
	return vs
}

func ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return 0
	}
	return float64(a) / float64(b)
}
