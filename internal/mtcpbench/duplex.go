package mtcpbench

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"hafe.dev/hafe/mtcp"
)

// DuplexConfig configures RunDuplex. Zero fields take the defaults noted.
type DuplexConfig struct {
	// Bytes is how much the client writes (and reads back) per round.
	// Default 8 MiB.
	Bytes int64
	// Rounds per side, alternating; the median counts. Default 11.
	Rounds int
}

func (c *DuplexConfig) fill() {
	if c.Bytes <= 0 {
		c.Bytes = 8 << 20
	}
	if c.Rounds <= 0 {
		c.Rounds = 11
	}
}

// DuplexResult is RunDuplex's measurement: median times of a full-duplex
// echo over raw TCP and over MTCP with default settings, and how many
// migrations the MTCP rounds made (a healthy path should make none).
type DuplexResult struct {
	Config     DuplexConfig
	Raw, MTCP  time.Duration
	Migrations int64
}

// echoDuplex writes size bytes from one goroutine while it reads the echo
// in another, as io.Copy on both sides of a proxy does, and returns how
// long the whole exchange took.
func echoDuplex(c net.Conn, size int64) (time.Duration, error) {
	t0 := time.Now()
	werr := make(chan error, 1)
	go func() {
		buf := make([]byte, bulkBuffer)
		for left := size; left > 0; {
			n := min(left, int64(len(buf)))
			if _, err := c.Write(buf[:n]); err != nil {
				werr <- err
				return
			}
			left -= n
		}
		werr <- nil
	}()
	n, err := io.CopyN(io.Discard, c, size)
	if err != nil {
		return 0, fmt.Errorf("echo ended after %d of %d bytes: %w", n, size, err)
	}
	if err := <-werr; err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

// RunDuplex echoes Bytes over raw TCP and over MTCP on loopback, the client
// writing and reading at once, in alternating rounds.
func RunDuplex(ctx context.Context, cfg DuplexConfig) (*DuplexResult, error) {
	cfg.fill()
	raw, stop, err := serveRawTCP(func(nc net.Conn) { _, _ = io.Copy(nc, nc) })
	if err != nil {
		return nil, err
	}
	defer stop()
	cl, err := newCluster(2, nil, func(_ int, c *mtcp.Conn) { _, _ = io.Copy(c, c) })
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	var migrations atomic.Int64
	d := &mtcp.Dialer{Servers: cl.addrs, OnMigration: func(mtcp.MigrationStats) { migrations.Add(1) }}
	dials := []func() (net.Conn, error){
		func() (net.Conn, error) { return net.Dial("tcp", raw.Addr().String()) },
		func() (net.Conn, error) { return d.DialContext(ctx, "tcp", cl.addrs[0]) },
	}
	once := func(k int, size int64) (time.Duration, error) {
		c, err := dials[k]()
		if err != nil {
			return 0, err
		}
		defer c.Close()
		// A stall shows as a time, not a hang: well past any path timeout.
		_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
		return echoDuplex(c, size)
	}
	for k := range dials { // warm up
		if _, err := once(k, min(cfg.Bytes, 1<<20)); err != nil {
			return nil, err
		}
	}
	migrations.Store(0)
	var times [2][]time.Duration
	for round := range cfg.Rounds {
		for i := range dials {
			k := i
			if round%2 == 1 {
				k = len(dials) - 1 - i
			}
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			dt, err := once(k, cfg.Bytes)
			if err != nil {
				return nil, fmt.Errorf("duplex echo on side %d: %w", k, err)
			}
			times[k] = append(times[k], dt)
		}
	}
	return &DuplexResult{Config: cfg, Raw: median(times[0]), MTCP: median(times[1]), Migrations: migrations.Load()}, nil
}

// Table renders the result side by side.
func (r *DuplexResult) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Full-duplex echo on loopback, %d MiB written while the echo is read, median of %d rounds\n\n", r.Config.Bytes>>20, r.Config.Rounds)
	fmt.Fprintf(&b, "%-24s%12s%12s%10s%12s\n", "", "raw TCP", "MTCP", "MTCP/raw", "migrations")
	fmt.Fprintf(&b, "%-24s%12s%12s%9.2fx%12d\n", "time", r.Raw.Round(10*time.Microsecond), r.MTCP.Round(10*time.Microsecond), r.Ratio(), r.Migrations)
	return b.String()
}

// Ratio is the MTCP time over the raw TCP time.
func (r *DuplexResult) Ratio() float64 { return float64(r.MTCP) / float64(r.Raw) }

// Verdicts compares the result with the targets: within 2× of raw TCP, and
// no migration on a healthy path.
func (r *DuplexResult) Verdicts() []Verdict {
	return []Verdict{
		{What: "full-duplex echo time, MTCP / raw TCP", Value: r.Ratio(), Target: 2, AtMost: true, Unit: "x"},
		{What: "migrations during the full-duplex echoes", Value: float64(r.Migrations), Target: 0, AtMost: true},
	}
}
