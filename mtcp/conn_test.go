package mtcp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"
)

// testCluster is n servers on loopback that know each other.
type testCluster struct {
	t      *testing.T
	export func(*Conn, []byte) error // how the test application snapshots; nil: ExportState
	lns    []*Listener
	addrs  []string
	store  SnapshotStore
	// noPrepare: the clients of testDialer fetch-only (Dialer.NoPrepare).
	noPrepare bool
}

var testKey = []byte("cluster key for tests, 32 bytes!")

func newCluster(t *testing.T, n int, store SnapshotStore, mod func(*ListenConfig)) *testCluster {
	t.Helper()
	tc := &testCluster{t: t, store: store}
	var raws []net.Listener
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		raws = append(raws, ln)
		tc.addrs = append(tc.addrs, ln.Addr().String())
	}
	for _, ln := range raws {
		cfg := ListenConfig{Servers: tc.addrs, ClusterKey: testKey, Store: store, DetachedTimeout: 3 * time.Second, Logger: testLogger()}
		if mod != nil {
			mod(&cfg)
		}
		l := NewListener(ln, cfg)
		tc.lns = append(tc.lns, l)
		t.Cleanup(func() { _ = l.Close() })
	}
	return tc
}

// echo serves every accepted connection by copying input to output.
func (tc *testCluster) echo() {
	tc.serve(func(c *Conn) { _, _ = io.Copy(c, c) })
}

// serve runs app on every connection each server accepts, and closes it.
func (tc *testCluster) serve(app func(*Conn)) {
	for _, l := range tc.lns {
		go func() {
			for {
				c, err := l.AcceptMTCP()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					app(c)
				}()
			}
		}()
	}
}

// testLogger logs to stderr when MTCP_TEST_LOG is set (debug level with
// MTCP_TEST_LOG=debug).
func testLogger() *slog.Logger {
	switch os.Getenv("MTCP_TEST_LOG") {
	case "":
		return nil
	case "debug":
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, nil))
}

func testDialer(tc *testCluster) *Dialer {
	// PREPARE whatever the RTT: on loopback the default would skip it.
	return &Dialer{Logger: testLogger(), Servers: tc.addrs, NoPrepare: tc.noPrepare, PrepareMinRTT: -1, Triggers: Triggers{KeepAlive: 200 * time.Millisecond, PathTimeout: 2 * time.Second}}
}

// dialChecked connects to server 0 with d and checks the echo; the
// connection closes when the test ends.
func (tc *testCluster) dialChecked(d *Dialer) *Conn {
	tc.t.Helper()
	c, err := d.DialMTCP(context.Background(), tc.addrs[0])
	if err != nil {
		tc.t.Fatal(err)
	}
	tc.t.Cleanup(func() { _ = c.Close() })
	echoCheck(tc.t, c)
	return c
}

func TestEchoOverOnePath(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 1, nil, nil)
	tc.echo()
	c, err := testDialer(tc).DialContext(context.Background(), "tcp", tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := bytes.Repeat([]byte("hello mtcp "), 100000) // > buffers, several frames
	go func() { _, _ = c.Write(msg) }()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("echo differs")
	}
}

func TestReadDeadlineTimesOut(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 1, nil, nil)
	tc.echo()
	c, err := testDialer(tc).DialContext(context.Background(), "tcp", tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("want a timeout, got %v", err)
	}
	// Clearing the deadline makes the connection usable again.
	_ = c.SetReadDeadline(time.Time{})
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil || b[0] != 'x' {
		t.Fatalf("read after deadline reset: %v", err)
	}
}

func TestCloseWriteDeliversEOFAndKeepsOtherDirection(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 1, nil, nil)
	done := make(chan error, 1)
	go func() {
		c, err := tc.lns[0].AcceptMTCP()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		b, err := io.ReadAll(c) // until the client's half-close
		if err != nil {
			done <- err
			return
		}
		_, err = c.Write(append([]byte("got:"), b...))
		done <- err
	}()
	c, err := testDialer(tc).DialMTCP(context.Background(), tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte("abc"))
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, ErrWriteClosed) {
		t.Fatalf("write after CloseWrite: %v", err)
	}
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "got:abc" {
		t.Fatalf("read %q, %v", b, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestCloseUnblocksAndReportsErrClosed(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 1, nil, nil)
	tc.echo()
	c, err := testDialer(tc).DialContext(context.Background(), "tcp", tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		errc <- err
	}()
	time.Sleep(10 * time.Millisecond)
	_ = c.Close()
	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("blocked Read after Close: %v", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v", err)
	}
}

// The server's ACK of the request may reach the client behind the data in
// the same read; the data must still be acknowledged, or the server stalls
// on its send buffer.
func TestDownloadBeyondTheSendBufferAfterARequest(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 1, nil, func(cfg *ListenConfig) { cfg.Limits.MaxSendBuffer = 128 << 10 })
	const size = 16 << 20
	go func() {
		c, err := tc.lns[0].AcceptMTCP()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := io.ReadFull(c, make([]byte, 9)); err != nil {
			return
		}
		_, _ = c.Write(make([]byte, size))
	}()
	c, err := testDialer(tc).DialContext(context.Background(), "tcp", tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(make([]byte, 9)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := io.Copy(io.Discard, c); n != size || err != nil {
		t.Fatalf("read %d bytes (%v), want %d", n, err, size)
	}
}

// TestClientCloseFlushesThroughAMigration: the client writes, its path
// fails, and it closes at once. The connection lingers, migrates, and
// delivers every byte and the end of the stream before it ends.
func TestClientCloseFlushesThroughAMigration(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 2, nil, nil)
	got := make(chan []byte, 2)
	tc.serve(func(c *Conn) {
		if b, err := io.ReadAll(c); err == nil {
			got <- b
		}
	})
	c, err := testDialer(tc).DialMTCP(context.Background(), tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	msg := bytes.Repeat([]byte("linger "), 100_000)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	p := c.path
	c.mu.Unlock()
	_ = p.nc.Close() // the path fails under the client
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after Close: %v, want net.ErrClosed", err)
	}
	select {
	case b := <-got:
		if !bytes.Equal(b, msg) {
			t.Fatalf("the server read %d bytes, want the %d written", len(b), len(msg))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the bytes written before Close never arrived")
	}
}

// TestLongPathGetsTheWholeSendBuffer: a Write that the send window holds
// up on a path with a round trip of longPathRTT or more may go on to
// MaxSendBuffer; on a short path it stops at SendWindow.
func TestLongPathGetsTheWholeSendBuffer(t *testing.T) {
	checkLeaks(t)
	for _, rtt := range []time.Duration{20 * time.Microsecond, 40 * time.Millisecond} {
		tc := newCluster(t, 1, nil, func(cfg *ListenConfig) {
			cfg.Limits.MaxRecvBuffer = 64 << 10 // the server hears little
		})
		release := make(chan struct{})
		tc.serve(func(c *Conn) { // its application reads only at the end
			<-release
			_, _ = io.Copy(io.Discard, c)
		})
		d := testDialer(tc)
		d.Limits.rttOf = func(net.Conn) (time.Duration, bool) { return rtt, true }
		c, err := d.DialMTCP(context.Background(), tc.addrs[0])
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := c.Write(make([]byte, 8<<20))
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("RTT %v: write ended with %v after %d bytes", rtt, err, n)
		}
		lim := c.lim
		switch long := rtt >= longPathRTT; {
		case !long && n > lim.SendWindow+(256<<10):
			t.Errorf("short path: %d bytes written, window %d", n, lim.SendWindow)
		case long && n < lim.MaxSendBuffer/2:
			t.Errorf("long path: only %d bytes written, buffer %d", n, lim.MaxSendBuffer)
		}
		t.Logf("RTT %v: %d KiB written before the window closed", rtt, n>>10)
		close(release)
		_ = c.Close()
	}
}
