package mtcpbench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"hafe.dev/hafe/mtcp"
)

// ThroughputConfig configures RunThroughput. Zero fields take the defaults
// noted.
type ThroughputConfig struct {
	// Bytes is how much one transfer moves. Default 128 MiB.
	Bytes int64
	// Rounds is how many transfers each side makes per direction, in
	// alternating order; the median counts. Default 11: loopback rates on
	// a shared machine vary by tens of percent from one transfer to the
	// next.
	Rounds int
}

func (c *ThroughputConfig) fill() {
	if c.Bytes <= 0 {
		c.Bytes = 128 << 20
	}
	if c.Rounds <= 0 {
		c.Rounds = 11
	}
}

// Throughput is one side's bulk transfer rates in bytes/s, the median of
// the rounds.
type Throughput struct {
	Upload, Download float64 // client→server, server→client
}

// ThroughputResult is RunThroughput's measurement.
type ThroughputResult struct {
	Config    ThroughputConfig
	Raw, MTCP Throughput
}

// bulk requests: one byte saying the direction, then the size.
const (
	bulkUpload   = 'U'
	bulkDownload = 'D'
)

// serveBulk is the bulk server application, over raw TCP or MTCP: an
// upload is read to EOF and answered with one byte; a download is written
// and half-closed.
func serveBulk(c net.Conn) error {
	var req [9]byte
	if _, err := io.ReadFull(c, req[:]); err != nil {
		return err
	}
	size := int64(binary.BigEndian.Uint64(req[1:]))
	switch req[0] {
	case bulkUpload:
		n, err := drain(c)
		if err != nil {
			return err
		}
		if n != size {
			return fmt.Errorf("upload of %d bytes ended after %d", size, n)
		}
		_, err = c.Write([]byte{1})
		return err
	case bulkDownload:
		buf := make([]byte, bulkBuffer)
		for left := size; left > 0; {
			n := min(left, int64(len(buf)))
			if _, err := c.Write(buf[:n]); err != nil {
				return err
			}
			left -= n
		}
		cw, ok := c.(interface{ CloseWrite() error })
		if !ok {
			return errors.New("connection cannot half-close")
		}
		if err := cw.CloseWrite(); err != nil {
			return err
		}
		_, err := io.Copy(io.Discard, c) // until the client closes
		return err
	}
	return fmt.Errorf("unknown request %q", req[0])
}

// bulkBuffer is what each side reads and writes at a time: large enough
// that raw TCP is not held back by syscalls (io.Copy into io.Discard would
// read 8 kB at a time).
const bulkBuffer = 256 << 10

// drain reads c to EOF with a bulkBuffer-sized buffer and counts the bytes.
func drain(c net.Conn) (int64, error) {
	buf := make([]byte, bulkBuffer)
	var n int64
	for {
		k, err := c.Read(buf)
		n += int64(k)
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// bulkTransfer runs one transfer on a fresh connection and returns its rate.
func bulkTransfer(dial func() (net.Conn, error), dir byte, size int64) (float64, error) {
	c, err := dial()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	req := [9]byte{dir}
	binary.BigEndian.PutUint64(req[1:], uint64(size))
	t0 := time.Now()
	if _, err := c.Write(req[:]); err != nil {
		return 0, err
	}
	switch dir {
	case bulkUpload:
		buf := make([]byte, bulkBuffer)
		for left := size; left > 0; {
			n := min(left, int64(len(buf)))
			if _, err := c.Write(buf[:n]); err != nil {
				return 0, err
			}
			left -= n
		}
		if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(c, req[:1]); err != nil {
			return 0, fmt.Errorf("upload not confirmed: %w", err)
		}
	case bulkDownload:
		n, err := drain(c)
		if err != nil {
			return 0, err
		}
		if n != size {
			return 0, fmt.Errorf("download of %d bytes ended after %d", size, n)
		}
	}
	return float64(size) / time.Since(t0).Seconds(), nil
}

// RunThroughput moves Bytes over raw TCP and over MTCP on loopback, each
// direction, in alternating rounds, and reports the mean rates.
func RunThroughput(ctx context.Context, cfg ThroughputConfig) (*ThroughputResult, error) {
	cfg.fill()
	raw, stop, err := serveRawTCP(func(nc net.Conn) { _ = serveBulk(nc) })
	if err != nil {
		return nil, err
	}
	defer stop()
	cl, err := newCluster(1, nil, func(_ int, c *mtcp.Conn) { _ = serveBulk(c) })
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	d := &mtcp.Dialer{}
	sides := []struct {
		t    *Throughput
		dial func() (net.Conn, error)
	}{
		{nil, func() (net.Conn, error) { return net.Dial("tcp", raw.Addr().String()) }},
		{nil, func() (net.Conn, error) { return d.DialContext(ctx, "tcp", cl.addrs[0]) }},
	}
	res := &ThroughputResult{Config: cfg}
	sides[0].t, sides[1].t = &res.Raw, &res.MTCP
	// Warm up both: connections, buffers, the Go runtime.
	for _, s := range sides {
		for _, dir := range []byte{bulkUpload, bulkDownload} {
			if _, err := bulkTransfer(s.dial, dir, min(cfg.Bytes, 4<<20)); err != nil {
				return nil, err
			}
		}
	}
	var rates [2][2][]float64 // side, direction
	for round := range cfg.Rounds {
		for k := range sides {
			if round%2 == 1 {
				k = len(sides) - 1 - k
			}
			for j, dir := range []byte{bulkUpload, bulkDownload} {
				if err := ctx.Err(); err != nil {
					return nil, err
				}
				r, err := bulkTransfer(sides[k].dial, dir, cfg.Bytes)
				if err != nil {
					return nil, fmt.Errorf("bulk %c on side %d: %w", dir, k, err)
				}
				rates[k][j] = append(rates[k][j], r)
			}
		}
	}
	for k, s := range sides {
		s.t.Upload, s.t.Download = medianRate(rates[k][0]), medianRate(rates[k][1])
	}
	return res, nil
}

// serveRawTCP serves every raw TCP connection accepted on a loopback
// port with serve, the baseline of a benchmark; stop closes the port and
// waits for the connections' handlers.
func serveRawTCP(serve func(net.Conn)) (ln net.Listener, stop func(), err error) {
	ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				serve(nc)
			}()
		}
	}()
	return ln, func() { _ = ln.Close(); wg.Wait() }, nil
}

func medianRate(rs []float64) float64 {
	s := slices.Clone(rs)
	slices.Sort(s)
	return s[len(s)/2]
}

// Table renders the result side by side.
func (r *ThroughputResult) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Bulk transfer on loopback, %d MiB per transfer, median of %d rounds, MB/s\n\n", r.Config.Bytes>>20, r.Config.Rounds)
	fmt.Fprintf(&b, "%-24s%12s%12s%10s\n", "direction", "raw TCP", "MTCP", "MTCP/raw")
	fmt.Fprintf(&b, "%-24s%12.0f%12.0f%9.2fx\n", "client → server", r.Raw.Upload/1e6, r.MTCP.Upload/1e6, r.MTCP.Upload/r.Raw.Upload)
	fmt.Fprintf(&b, "%-24s%12.0f%12.0f%9.2fx\n", "server → client", r.Raw.Download/1e6, r.MTCP.Download/1e6, r.MTCP.Download/r.Raw.Download)
	return b.String()
}

// Verdicts compares the result with the target: MTCP at least 0.9× raw
// TCP both ways.
func (r *ThroughputResult) Verdicts() []Verdict {
	return []Verdict{
		{What: "bulk throughput client → server, MTCP / raw TCP", Value: r.MTCP.Upload / r.Raw.Upload, Target: 0.9, Unit: "x"},
		{What: "bulk throughput server → client, MTCP / raw TCP", Value: r.MTCP.Download / r.Raw.Download, Target: 0.9, Unit: "x"},
	}
}
