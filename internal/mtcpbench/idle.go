package mtcpbench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"time"

	"hafe.dev/hafe/mtcp"
)

// idleTraffic is what every idle connection carries before it goes quiet:
// some input, read by the application and covered by a snapshot.
const idleTraffic = 16 << 10

// Spawner starts a process holding n idle client connections to addr (raw
// TCP if raw, else MTCP) and returns once they are open and have sent
// their traffic; stop closes them and waits for the process. The clients
// live in another process so that only the server's memory is measured.
type Spawner func(ctx context.Context, addr string, n int, raw bool) (stop func() error, err error)

// CommandSpawner is a Spawner that runs the command cmd(addr, n, raw)
// returns, which must call RunIdleClients with its stdin and stdout.
func CommandSpawner(cmd func(ctx context.Context, addr string, n int, raw bool) *exec.Cmd) Spawner {
	return func(ctx context.Context, addr string, n int, raw bool) (func() error, error) {
		c := cmd(ctx, addr, n, raw)
		stdin, err := c.StdinPipe()
		if err != nil {
			return nil, err
		}
		stdout, err := c.StdoutPipe()
		if err != nil {
			return nil, err
		}
		var stderr strings.Builder
		c.Stderr = &stderr
		if err := c.Start(); err != nil {
			return nil, err
		}
		stop := sync.OnceValue(func() error {
			_ = stdin.Close()
			if err := c.Wait(); err != nil {
				return fmt.Errorf("idle clients: %w: %s", err, strings.TrimSpace(stderr.String()))
			}
			return nil
		})
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil || strings.TrimSpace(line) != "ready" {
			serr := stop()
			return nil, fmt.Errorf("idle clients did not get ready (%q, %v): %v", line, err, serr)
		}
		return stop, nil
	}
}

// RunIdleClients is the client process of RunIdleMemory: it opens n
// connections to addr, sends each its traffic, writes "ready" to out, and
// holds them until in ends.
func RunIdleClients(ctx context.Context, addr string, n int, raw bool, in io.Reader, out io.Writer) error {
	d := &mtcp.Dialer{}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	traffic := make([]byte, idleTraffic)
	for range n {
		var c net.Conn
		var err error
		if raw {
			var nd net.Dialer
			c, err = nd.DialContext(ctx, "tcp", addr)
		} else {
			c, err = d.DialContext(ctx, "tcp", addr)
		}
		if err != nil {
			return err
		}
		conns = append(conns, c)
		if _, err := c.Write(traffic); err != nil {
			return err
		}
	}
	if _, err := fmt.Fprintln(out, "ready"); err != nil {
		return err
	}
	_, err := io.Copy(io.Discard, in)
	return err
}

// IdleConfig configures RunIdleMemory. Zero fields take the defaults noted.
type IdleConfig struct {
	Conns int // idle connections measured. Default 500.
	Spawn Spawner
}

// IdleResult is RunIdleMemory's measurement: Go heap and stack in use per
// idle server connection, after it carried some traffic.
type IdleResult struct {
	Conns     int
	MTCP, Raw float64 // bytes per connection
}

// RunIdleMemory measures the memory one idle server connection holds, for
// MTCP and, for comparison, raw TCP (the kernel's socket buffers are not
// counted; Go's are). Each connection received 16 kB that the application
// read (and, on MTCP, covered with a snapshot) and then went quiet; the
// application holds no goroutine for it.
func RunIdleMemory(ctx context.Context, cfg IdleConfig) (*IdleResult, error) {
	if cfg.Conns <= 0 {
		cfg.Conns = 500
	}
	if cfg.Spawn == nil {
		return nil, errors.New("idle memory: no Spawner")
	}
	res := &IdleResult{Conns: cfg.Conns}
	for _, raw := range []bool{false, true} {
		b, err := idleMemory(ctx, cfg, raw)
		if err != nil {
			return nil, err
		}
		if raw {
			res.Raw = b
		} else {
			res.MTCP = b
		}
	}
	return res, nil
}

// idleServer accepts connections and reads each one's traffic, counting
// the ones done; it keeps them open.
type idleServer struct {
	mu    sync.Mutex
	cond  *sync.Cond
	done  int
	err   error
	conns []net.Conn
}

func (s *idleServer) serve(c net.Conn) {
	buf := make([]byte, idleTraffic)
	_, err := io.ReadFull(c, buf)
	if err == nil {
		if mc, ok := c.(*mtcp.Conn); ok {
			err = mc.ExportState(nil) // the input log is released
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conns = append(s.conns, c)
	s.done++
	if err != nil && s.err == nil {
		s.err = err
	}
	s.cond.Broadcast()
}

func (s *idleServer) wait(ctx context.Context, n int) error {
	stop := context.AfterFunc(ctx, func() { s.mu.Lock(); s.cond.Broadcast(); s.mu.Unlock() })
	defer stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.done < n && s.err == nil && ctx.Err() == nil {
		s.cond.Wait()
	}
	if s.err != nil {
		return s.err
	}
	return ctx.Err()
}

func (s *idleServer) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		_ = c.Close()
	}
}

func heapAndStack() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse + ms.StackInuse
}

func idleMemory(ctx context.Context, cfg IdleConfig, raw bool) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	s := &idleServer{}
	s.cond = sync.NewCond(&s.mu)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	var accept func() (net.Conn, error)
	var closeLn func() error
	if raw {
		accept, closeLn = ln.Accept, ln.Close
	} else {
		l := mtcp.NewListener(ln, mtcp.ListenConfig{})
		accept, closeLn = l.Accept, l.Close
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer s.closeAll()
	defer closeLn()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); s.serve(c) }()
		}
	}()
	addr := ln.Addr().String()
	// Warm up, so lazily grown runtime structures are not counted.
	const warm = 20
	stopWarm, err := cfg.Spawn(ctx, addr, warm, raw)
	if err != nil {
		return 0, err
	}
	defer stopWarm()
	if err := s.wait(ctx, warm); err != nil {
		return 0, err
	}
	time.Sleep(50 * time.Millisecond) // acknowledgements go out
	before := heapAndStack()
	stop, err := cfg.Spawn(ctx, addr, cfg.Conns, raw)
	if err != nil {
		return 0, err
	}
	defer stop()
	if err := s.wait(ctx, warm+cfg.Conns); err != nil {
		return 0, err
	}
	time.Sleep(50 * time.Millisecond)
	after := heapAndStack()
	s.closeAll()
	if err := stop(); err != nil {
		return 0, err
	}
	if err := stopWarm(); err != nil {
		return 0, err
	}
	return (float64(after) - float64(before)) / float64(cfg.Conns), nil
}

// Table renders the result.
func (r *IdleResult) Table() string {
	return fmt.Sprintf("Memory per idle server connection (Go heap + stacks, %d connections, each after 16 kB read)\n\n"+
		"%-24s%12s\n%-24s%12.0f\n%-24s%12.0f\n",
		r.Conns, "", "bytes/conn", "MTCP", r.MTCP, "raw TCP (Go side only)", r.Raw)
}

// Verdict compares the result with the target of issue 3 (at most 64 KiB).
func (r *IdleResult) Verdict() Verdict {
	return Verdict{What: "memory per idle MTCP server connection", Value: r.MTCP / 1024, Target: 64, AtMost: true, Unit: " KiB"}
}
