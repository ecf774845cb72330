package mtcpbench

import (
	"context"
	"encoding/binary"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"hafe.dev/hafe/mtcp"
)

// StreamConfig configures RunStream. Zero fields take the defaults noted.
type StreamConfig struct {
	// Total is how many bytes the server application streams. Default 1 MiB.
	Total int
	// Chunk is the size of the application's writes. Default 1 kB.
	Chunk int
	// SlowAfter is the stream offset after which the first server slows
	// down. Default 32 kB.
	SlowAfter int
	// Period is the time between chunks of a healthy server. Default 1ms.
	Period time.Duration
	// Slowdown multiplies the slowed server's period. Default 4.
	Slowdown float64
	// Rate is the client's rate policy. Default: mtcp's defaults (75% of
	// the peak) with a 20ms sampling interval.
	Rate mtcp.RatePolicy
}

func (c *StreamConfig) fill() {
	if c.Total <= 0 {
		c.Total = 1 << 20
	}
	if c.Chunk <= 0 {
		c.Chunk = 1 << 10
	}
	if c.SlowAfter <= 0 {
		c.SlowAfter = 32 << 10
	}
	if c.Period <= 0 {
		c.Period = time.Millisecond
	}
	if c.Slowdown <= 0 {
		c.Slowdown = 4
	}
	if c.Rate.Interval <= 0 {
		c.Rate.Interval = 20 * time.Millisecond
	}
}

// TracePoint is the client's state after one Read.
type TracePoint struct {
	T        time.Duration // since the connection was opened
	Received int64         // bytes received so far
	Server   string        // the server's name ("s1", "s2")
}

// StreamMigration is one migration the client made.
type StreamMigration struct {
	T        time.Duration       // when it completed, since the connection was opened
	From, To string              // server names
	Stats    mtcp.MigrationStats // the client's view
	Server   mtcp.MigrationStats // the new server's view
}

// StreamResult is RunStream's measurement.
type StreamResult struct {
	Config     StreamConfig
	Servers    []string // s1 (slows down), s2 (healthy) addresses
	Trace      []TracePoint
	Migrations []StreamMigration
	// SlowdownAt is when the client had received SlowAfter bytes, after
	// which s1 slows down.
	SlowdownAt time.Duration
	Received   int64
	// PreRate is the receive rate from the first Read until SlowdownAt;
	// Effective the rate from the first Read until the last byte; PostRate
	// the rate after the last migration. In bytes/s.
	PreRate, Effective, PostRate float64
}

// streamByte is the stream's content at offset off, so the client can
// check every byte.
func streamByte(off uint64) byte { return byte(off*7 + off>>8) }

// serveStream is the streaming server application, deterministic from its
// exported state (the stream offset, snapshotted after every chunk): it
// writes chunks at one per period until Total, slowing down past SlowAfter
// if slows, then half-closes and waits for the client to close.
func serveStream(c *mtcp.Conn, cfg StreamConfig, slows bool) {
	var off uint64
	if b, ok := c.ImportState(); ok && len(b) == 8 {
		off = binary.BigEndian.Uint64(b)
	}
	chunk := make([]byte, cfg.Chunk)
	next := time.Now()
	for off < uint64(cfg.Total) {
		n := min(uint64(cfg.Chunk), uint64(cfg.Total)-off)
		for i := range chunk[:n] {
			chunk[i] = streamByte(off + uint64(i))
		}
		if _, err := c.Write(chunk[:n]); err != nil {
			return
		}
		off += n
		if err := c.ExportState(binary.BigEndian.AppendUint64(nil, off)); err != nil {
			return
		}
		period := cfg.Period
		if slows && off >= uint64(cfg.SlowAfter) {
			period = time.Duration(float64(period) * cfg.Slowdown)
		}
		// Paced by a schedule, so sleeping late does not lower the rate.
		next = next.Add(period)
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
	}
	if err := c.CloseWrite(); err != nil {
		return
	}
	_, _ = io.Copy(io.Discard, c) // until the client closes
}

// RunStream runs the seed's streaming experiment on loopback: server s1
// streams and slows down after SlowAfter bytes, the client's rate policy
// migrates to s2, which continues the stream from the snapshot. It checks
// that the client receives exactly the stream's bytes, then EOF.
func RunStream(ctx context.Context, cfg StreamConfig) (*StreamResult, error) {
	cfg.fill()
	if cfg.SlowAfter >= cfg.Total {
		return nil, fmt.Errorf("slow-down offset %d is not inside the %d-byte stream", cfg.SlowAfter, cfg.Total)
	}
	var (
		mu    sync.Mutex
		start time.Time
		taken []mtcp.MigrationStats // the new servers' views, in order
	)
	onServer := func(s mtcp.MigrationStats) {
		if s.Role == mtcp.RoleNewServer && s.Err == nil {
			mu.Lock()
			taken = append(taken, s)
			mu.Unlock()
		}
	}
	cl, err := newCluster(2, func(_ int, lc *mtcp.ListenConfig) { lc.OnMigration = onServer },
		func(i int, c *mtcp.Conn) { serveStream(c, cfg, i == 0) })
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	res := &StreamResult{Config: cfg, Servers: cl.addrs}
	name := func(addr string) string {
		for i, a := range cl.addrs {
			if a == addr {
				return "s" + strconv.Itoa(i+1)
			}
		}
		return addr
	}

	rate := cfg.Rate
	d := &mtcp.Dialer{
		Servers:  cl.addrs,
		Triggers: mtcp.Triggers{Rate: &rate},
		OnMigration: func(s mtcp.MigrationStats) {
			mu.Lock()
			defer mu.Unlock()
			if s.Err == nil {
				res.Migrations = append(res.Migrations, StreamMigration{T: time.Since(start), From: name(s.From), To: name(s.To), Stats: s})
			}
		},
	}
	mu.Lock()
	start = time.Now()
	mu.Unlock()
	c, err := d.DialMTCP(ctx, cl.addrs[0])
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Now()) })
	defer stop()

	buf := make([]byte, 4096)
	var off int64
	for {
		n, err := c.Read(buf)
		for i, b := range buf[:n] {
			if b != streamByte(uint64(off)+uint64(i)) {
				return nil, fmt.Errorf("byte %d of the stream differs", off+int64(i))
			}
		}
		now := time.Since(start)
		if n > 0 {
			before := off
			off += int64(n)
			res.Trace = append(res.Trace, TracePoint{T: now, Received: off, Server: name(c.Server())})
			if before < int64(cfg.SlowAfter) && off >= int64(cfg.SlowAfter) {
				res.SlowdownAt = now
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("read at offset %d: %w", off, err)
		}
		if off > int64(cfg.Total) {
			return nil, fmt.Errorf("received %d bytes, more than the %d streamed", off, cfg.Total)
		}
	}
	res.Received = off
	if off != int64(cfg.Total) {
		return nil, fmt.Errorf("received %d bytes before EOF, want %d", off, cfg.Total)
	}
	mu.Lock()
	defer mu.Unlock()
	for i := range res.Migrations {
		if i < len(taken) {
			res.Migrations[i].Server = taken[i]
		}
	}
	res.rates()
	return res, nil
}

// rates computes PreRate, Effective and PostRate from the trace.
func (r *StreamResult) rates() {
	if len(r.Trace) < 2 {
		return
	}
	first, last := r.Trace[0], r.Trace[len(r.Trace)-1]
	rate := func(a, b TracePoint) float64 {
		dt := (b.T - a.T).Seconds()
		if dt <= 0 {
			return 0
		}
		return float64(b.Received-a.Received) / dt
	}
	for _, p := range r.Trace {
		if p.T >= r.SlowdownAt {
			r.PreRate = rate(first, p)
			break
		}
	}
	r.Effective = rate(first, last)
	if len(r.Migrations) > 0 {
		mt := r.Migrations[len(r.Migrations)-1].T
		for _, p := range r.Trace {
			if p.T >= mt {
				r.PostRate = rate(p, last)
				break
			}
		}
	}
}

// WriteCSV writes the trace: time in seconds, bytes received, server.
func (r *StreamResult) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"time_s", "received_bytes", "server"})
	for _, p := range r.Trace {
		_ = cw.Write([]string{strconv.FormatFloat(p.T.Seconds(), 'f', 6, 64), strconv.FormatInt(p.Received, 10), p.Server})
	}
	cw.Flush()
	return cw.Error()
}

// Verdict compares the effective throughput with the pre-slowdown rate
// (target of issue 3: at least 90%).
func (r *StreamResult) Verdict() Verdict {
	v := 0.0
	if r.PreRate > 0 {
		v = 100 * r.Effective / r.PreRate
	}
	return Verdict{What: "streaming: effective throughput / pre-slowdown rate", Value: v, Target: 90, Unit: "%"}
}

// Summary describes the run in a few lines.
func (r *StreamResult) Summary() string {
	cfg := r.Config
	s := fmt.Sprintf("stream of %d bytes in %d-byte chunks, one per %s; s1 (%s) slows down %gx after %d bytes, s2 (%s) stays healthy\n",
		cfg.Total, cfg.Chunk, cfg.Period, r.Servers[0], cfg.Slowdown, cfg.SlowAfter, r.Servers[1])
	s += fmt.Sprintf("rate policy: migrate below %.0f%% of the peak, sampled every %s\n", 100*fractionOr(cfg.Rate.Fraction), cfg.Rate.Interval)
	s += fmt.Sprintf("received %d bytes, every one as streamed, then EOF; slow-down reached at %.1f ms\n", r.Received, ms(r.SlowdownAt))
	for _, m := range r.Migrations {
		st := m.Stats
		s += fmt.Sprintf("migration %s → %s at %.1f ms (%.1f ms after the slow-down), took %.0f µs, %s mode, %d bytes of state transferred\n",
			m.From, m.To, ms(m.T), ms(m.T-r.SlowdownAt), float64((st.Initiate+st.Wait+st.Complete).Nanoseconds())/1000, m.Server.Mode, m.Server.StateBytes)
	}
	if len(r.Migrations) == 0 {
		s += "no migration happened\n"
	}
	s += fmt.Sprintf("pre-slowdown rate %.0f kB/s, effective %.0f kB/s over the whole stream, %.0f kB/s after the migration\n",
		r.PreRate/1000, r.Effective/1000, r.PostRate/1000)
	return s
}

func fractionOr(f float64) float64 {
	if f <= 0 {
		return 0.75
	}
	return f
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
