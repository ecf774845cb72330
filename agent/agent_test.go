package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"hafe.dev/hafe/mtcp"
)

// cluster is n in-process MTCP servers running app on every connection.
type cluster struct {
	addrs []string
	lns   []*mtcp.Listener
	raws  []*trackingListener
}

// crash ends server i as a killed process would: its listener and every
// transport connection it accepted are gone.
func (cl *cluster) crash(i int) {
	cl.lns[i].Close()
	cl.raws[i].cutAll()
}

// trackingListener remembers the connections it accepted.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *trackingListener) cutAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
}

func startCluster(t testing.TB, n int, app func(*mtcp.Conn)) *cluster {
	t.Helper()
	cl := &cluster{}
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		cl.raws = append(cl.raws, &trackingListener{Listener: ln})
		cl.addrs = append(cl.addrs, ln.Addr().String())
	}
	for i, raw := range cl.raws {
		l := mtcp.NewListener(raw, mtcp.ListenConfig{Self: cl.addrs[i], Servers: cl.addrs, ClusterKey: []byte("agent test cluster key, 32 bytes"),
			Limits: mtcp.Limits{MaxInputLog: 64 << 20}})
		cl.lns = append(cl.lns, l)
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.AcceptMTCP()
				if err != nil {
					return
				}
				go app(c)
			}
		}()
	}
	return cl
}

// startAgent runs an agent in front of servers on a loopback listener.
func startAgent(t testing.TB, cfg Config) (*Agent, string) {
	t.Helper()
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics()
	}
	if cfg.Logger == nil && os.Getenv("HAFE_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go a.Serve(ln)
	t.Cleanup(func() {
		ln.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		a.Shutdown(ctx)
	})
	return a, ln.Addr().String()
}

// hashServer reads its input to the end, then answers its length and
// SHA-256 and closes.
func hashServer(c *mtcp.Conn) {
	defer c.Close()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		return
	}
	fmt.Fprintf(c, "%d %x\n", n, h.Sum(nil))
}

// TestLargeUploadAndHalfClose: 32 MiB sent through the agent, then the
// client's half-close; the server sees every byte and the end of stream
// (it answers only then), and the client reads the answer and the
// server's end of stream while its own side is closed.
func TestLargeUploadAndHalfClose(t *testing.T) {
	cl := startCluster(t, 1, hashServer)
	a, addr := startAgent(t, Config{Servers: cl.addrs})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := make([]byte, 32<<20)
	rand.Read(body)
	sum := sha256.Sum256(body)
	start := time.Now()
	if _, err := c.Write(body); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if want := fmt.Sprintf("%d %s\n", len(body), hex.EncodeToString(sum[:])); string(got) != want {
		t.Fatalf("server answered %q, want %q", got, want)
	}
	t.Logf("32 MiB up and the answer back in %v (%.0f MB/s)", took, float64(len(body))/took.Seconds()/1e6)
	waitFor(t, "the relay to end", func() bool { return a.Open() == 0 })
	if got := value(a.cfg.Metrics.conns.WithLabelValues("ok")); got != 1 {
		t.Errorf("%v connections ended ok", got)
	}
	if got := value(a.cfg.Metrics.upBytes); got != float64(len(body)) {
		t.Errorf("%v bytes counted up, sent %d", got, len(body))
	}
}

// TestServerHalfCloseReachesTheClientFirst: the server says hello and
// half-closes; the client reads the hello and EOF with its own side still
// open, then sends its answer, which the server reads after all.
func TestServerHalfCloseReachesTheClientFirst(t *testing.T) {
	got := make(chan string, 1)
	cl := startCluster(t, 1, func(c *mtcp.Conn) {
		defer c.Close()
		io.WriteString(c, "hello")
		if err := c.CloseWrite(); err != nil {
			got <- err.Error()
			return
		}
		b, err := io.ReadAll(c)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(b)
	})
	_, addr := startAgent(t, Config{Servers: cl.addrs})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "hello" {
		t.Fatalf("read %q, %v; want hello and EOF", b, err)
	}
	if _, err := io.WriteString(c, "world, after your FIN"); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	select {
	case s := <-got:
		if s != "world, after your FIN" {
			t.Fatalf("server read %q", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the server never read the client's bytes and FIN")
	}
}

// TestBackPressure: a server that does not read holds the client up: the
// agent buffers at most its MTCP send buffer and a few socket buffers,
// not the whole stream.
func TestBackPressure(t *testing.T) {
	release := make(chan struct{})
	cl := startCluster(t, 1, func(c *mtcp.Conn) {
		defer c.Close()
		<-release
		io.Copy(io.Discard, c)
	})
	defer close(release)
	_, addr := startAgent(t, Config{Servers: cl.addrs, Dialer: mtcp.Dialer{Limits: mtcp.Limits{MaxSendBuffer: 4 << 20}}})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	chunk := make([]byte, 256<<10)
	var sent int
	c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	for sent < 256<<20 {
		n, err := c.Write(chunk)
		sent += n
		if err != nil {
			break
		}
	}
	t.Logf("a client sent %d MiB to a server that reads nothing before it was held up", sent>>20)
	if sent >= 64<<20 {
		t.Fatalf("%d MiB taken from the client: no back-pressure", sent>>20)
	}
}

// TestServerThatStopsReadingStillAnswers: a server that reads 1 KiB of a
// large upload, answers and closes; the client, still sending, reads the
// whole answer and an end of stream, not a reset that would lose it.
func TestServerThatStopsReadingStillAnswers(t *testing.T) {
	answer := strings.Repeat("too large, stop.\n", 100)
	cl := startCluster(t, 1, func(c *mtcp.Conn) {
		io.ReadFull(c, make([]byte, 1024))
		io.WriteString(c, answer)
		c.Close()
	})
	a, addr := startAgent(t, Config{Servers: cl.addrs})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go func() {
		chunk := make([]byte, 64<<10)
		for range 512 { // 32 MiB, or until the agent stops reading
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
		c.(*net.TCPConn).CloseWrite()
	}()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != answer {
		t.Fatalf("read %d bytes of the answer's %d, %v", len(got), len(answer), err)
	}
	waitFor(t, "the relay to end", func() bool { return a.Open() == 0 })
}

// echoServer echoes its input and exports an empty state after each
// piece, so the connection can move at any point.
func echoServer(c *mtcp.Conn) {
	defer c.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
			if err := c.ExportState(nil); err != nil {
				return
			}
		}
		if err != nil {
			c.CloseWrite()
			return
		}
	}
}

// TestConnectionMovesUnderTheClient: the server the agent's connection
// runs on drains in the middle of an exchange; the client's connection is
// the same, every line comes back once and in order, and the agent logs
// and counts the move.
func TestConnectionMovesUnderTheClient(t *testing.T) {
	cl := startCluster(t, 2, echoServer)
	var logs syncBuffer
	a, addr := startAgent(t, Config{Servers: cl.addrs[:1], Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	for i := range 200 {
		if i == 100 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := cl.lns[0].Drain(ctx)
			cancel()
			if err != nil {
				t.Fatalf("drain: %v", err)
			}
		}
		line := fmt.Sprintf("line %d\n", i)
		if _, err := io.WriteString(c, line); err != nil {
			t.Fatal(err)
		}
		got, err := br.ReadString('\n')
		if err != nil || got != line {
			t.Fatalf("sent %q, got %q, %v", line, got, err)
		}
	}
	c.(*net.TCPConn).CloseWrite()
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Fatalf("after the half-close: %q, %v", rest, err)
	}
	if got := value(a.cfg.Metrics.migrations.WithLabelValues(mtcp.TriggerRedirect, "ok")); got != 1 {
		t.Errorf("%v redirected migrations counted, want 1\n%s", got, logs.String())
	}
	out := logs.String()
	if !strings.Contains(out, "msg=migrated") || !strings.Contains(out, "from="+cl.addrs[0]) || !strings.Contains(out, "to="+cl.addrs[1]) || !strings.Contains(out, "trigger=redirect") {
		t.Errorf("no migration line from %s to %s:\n%s", cl.addrs[0], cl.addrs[1], out)
	}
	// The agent learnt the second server from the first one.
	if s := a.Servers(); len(s) != 2 {
		t.Errorf("the agent knows %v", s)
	}
}

// TestLostConnectionResetsTheClient: when no server can take the
// connection any more, the client sees a reset, not an end of stream
// that would pass for a complete answer.
func TestLostConnectionResetsTheClient(t *testing.T) {
	cl := startCluster(t, 1, echoServer)
	_, addr := startAgent(t, Config{Servers: cl.addrs, Dialer: mtcp.Dialer{RecoverTimeout: time.Second,
		Triggers: mtcp.Triggers{KeepAlive: 100 * time.Millisecond, PathTimeout: 300 * time.Millisecond}}})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "x")
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatal(err)
	}
	cl.crash(0)
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	_, err = c.Read(b)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read %v, want a connection reset", err)
	}
}

// TestClientResetEndsTheRelay: a client that resets its connection while
// the server is silent ends the relay, and the server reads an end of
// stream.
func TestClientResetEndsTheRelay(t *testing.T) {
	got := make(chan error, 1)
	cl := startCluster(t, 1, func(c *mtcp.Conn) {
		defer c.Close()
		_, err := io.Copy(io.Discard, c)
		got <- err
	})
	a, addr := startAgent(t, Config{Servers: cl.addrs})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "hello")
	waitFor(t, "the relay to open", func() bool { return a.Open() == 1 })
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	waitFor(t, "the relay to end", func() bool { return a.Open() == 0 })
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("server: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the server never saw the connection end")
	}
	if got := value(a.cfg.Metrics.conns.WithLabelValues("aborted")); got != 1 {
		t.Errorf("%v aborted connections counted", got)
	}
}

// TestNoServerResetsTheClient: a connection no front-end takes is reset.
func TestNoServerResetsTheClient(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	a, addr := startAgent(t, Config{Servers: []string{dead}, DialTimeout: time.Second})
	c, err := net.Dial("tcp", addr)
	if err == nil { // else the reset came first
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Read(make([]byte, 1))
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read %v, want a connection reset", err)
	}
	waitFor(t, "the failed dial to be counted", func() bool { return value(a.cfg.Metrics.conns.WithLabelValues("dial_failed")) == 1 })
	if got := value(a.cfg.Metrics.conns.WithLabelValues("dial_failed")); got != 1 {
		t.Errorf("%v failed dials counted", got)
	}
}

func TestNewChecksServers(t *testing.T) {
	for _, s := range [][]string{nil, {"no-port"}} {
		if _, err := New(Config{Servers: s}); err == nil {
			t.Errorf("servers %q accepted", s)
		}
	}
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// value reads a counter or gauge.
func value(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

// blackhole forwards TCP connections to a server until cut, then lets
// every byte drop while keeping the connections open, as a network that
// fails silently does.
type blackhole struct {
	ln  net.Listener
	cut chan struct{}
}

func newBlackhole(t testing.TB, to string) *blackhole {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{ln: ln, cut: make(chan struct{})}
	t.Cleanup(func() { ln.Close() })
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if err != nil {
				return
			}
			select {
			case <-b.cut:
				continue // dropped
			default:
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", to)
			if err != nil {
				c.Close()
				continue
			}
			t.Cleanup(func() { c.Close(); s.Close() })
			go pipe(s, c)
			go pipe(c, s)
		}
	}()
	return b
}

// TestNetworkCutMovesTheConnection: the path to the server goes silent
// (bytes dropped, no reset); after --path-timeout the agent's connection
// moves and the exchange goes on, every line once and in order.
func TestNetworkCutMovesTheConnection(t *testing.T) {
	cl := startCluster(t, 2, echoServer)
	bh := newBlackhole(t, cl.addrs[0])
	var logs syncBuffer
	a, addr := startAgent(t, Config{Servers: []string{bh.ln.Addr().String()}, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		Dialer: mtcp.Dialer{Triggers: mtcp.Triggers{KeepAlive: 100 * time.Millisecond, PathTimeout: 300 * time.Millisecond}}})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	var stall time.Duration
	for i := range 100 {
		if i == 50 {
			close(bh.cut)
		}
		line := fmt.Sprintf("line %d\n", i)
		t0 := time.Now()
		if _, err := io.WriteString(c, line); err != nil {
			t.Fatal(err)
		}
		got, err := br.ReadString('\n')
		if err != nil || got != line {
			t.Fatalf("sent %q, got %q, %v\n%s", line, got, err, logs.String())
		}
		stall = max(stall, time.Since(t0))
	}
	t.Logf("longest echo %v (path timeout 300ms)", stall.Round(time.Millisecond))
	if got := value(a.cfg.Metrics.migrations.WithLabelValues(mtcp.TriggerPathFailure, "ok")); got != 1 {
		t.Errorf("%v path-failure migrations counted, want 1\n%s", got, logs.String())
	}
}

// TestShutdownWaitsThenResets: Shutdown lets relayed connections end on
// their own until its context is done, then resets those left.
func TestShutdownWaitsThenResets(t *testing.T) {
	cl := startCluster(t, 1, echoServer)
	a, err := New(Config{Servers: cl.addrs})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go a.Serve(ln)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "x")
	io.ReadFull(c, make([]byte, 1))
	ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := a.Shutdown(ctx); err == nil {
		t.Fatal("Shutdown reported every connection ended on its own")
	}
	if took := time.Since(start); took < 200*time.Millisecond || took > 5*time.Second {
		t.Errorf("Shutdown took %v", took)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("read %v, want a reset", err)
	}
}
