package simnet

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// patience bounds every wait in these tests. It is generous on purpose: a
// test may be slow on a loaded machine, but it must not fail for it.
const patience = 60 * time.Second

// topology is a network with a client and a server joined by one link.
type topology struct {
	net            *Network
	client, server *Host
}

func newTopology(t testing.TB, cfg LinkConfig) topology {
	t.Helper()
	var log *slog.Logger
	if _, ok := t.(*testing.T); ok {
		log = slog.New(slog.NewTextHandler(tWriter{t}, nil))
	}
	n := New(Config{Seed: 1, Logger: log})
	t.Cleanup(func() { n.Close() })
	c, err := n.AddHost("client", netip.MustParseAddr("10.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := n.AddHost("server", netip.MustParseAddr("10.0.0.2"))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Link(c, s, cfg); err != nil {
		t.Fatal(err)
	}
	return topology{net: n, client: c, server: s}
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimSuffix(p, []byte("\n"))))
	return len(p), nil
}

// connPair returns both ends of a connection from client to server.
func (tp topology) connPair(t testing.TB) (client, server net.Conn) {
	t.Helper()
	ln, err := tp.server.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	port := ln.Addr().(*net.TCPAddr).Port
	client, err = tp.client.DialContext(ctx, "tcp", net.JoinHostPort(tp.server.Addr().String(), strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.FailNow()
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// echo copies everything c reads back to c until EOF, then closes c.
func echo(c net.Conn) {
	io.Copy(c, c)
	c.Close()
}

func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// roundTrip writes data to c from another goroutine, half-closes, and
// returns everything read from c until EOF.
func roundTrip(t *testing.T, c net.Conn, data []byte) []byte {
	t.Helper()
	c.SetDeadline(time.Now().Add(patience))
	var wg sync.WaitGroup
	wg.Go(func() {
		if _, err := c.Write(data); err != nil {
			t.Errorf("write: %v", err)
		}
		if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			t.Errorf("close write: %v", err)
		}
	})
	got, err := io.ReadAll(c)
	if err != nil {
		t.Errorf("read: %v", err)
	}
	wg.Wait()
	return got
}

func TestEchoAcrossLink(t *testing.T) {
	checkNoLeaks(t)
	tp := newTopology(t, LinkConfig{Delay: 2 * time.Millisecond})
	ln, err := tp.server.Listen("tcp", ":7")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go echo(c)
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	// By address and by host name.
	for _, addr := range []string{"10.0.0.2:7", "server:7"} {
		c, err := tp.client.DialContext(ctx, "tcp", addr)
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		if got, want := c.RemoteAddr().String(), "10.0.0.2:7"; got != want {
			t.Errorf("RemoteAddr = %s, want %s", got, want)
		}
		if got := c.LocalAddr().(*net.TCPAddr).IP.String(); got != "10.0.0.1" {
			t.Errorf("LocalAddr IP = %s, want 10.0.0.1", got)
		}
		data := randomBytes(1, 200<<10)
		if got := roundTrip(t, c, data); !bytes.Equal(got, data) {
			t.Errorf("echo via %s returned %d bytes, want the %d sent", addr, len(got), len(data))
		}
		c.Close()
	}
	st, err := tp.net.Stats(tp.client, tp.server)
	if err != nil {
		t.Fatal(err)
	}
	if st.Delivered == 0 || st.Lost != 0 || st.Cut != 0 {
		t.Errorf("client→server stats = %+v, want deliveries and no drops", st)
	}
}

func TestBytesArriveIntactUnderLoss(t *testing.T) {
	checkNoLeaks(t)
	tp := newTopology(t, LinkConfig{Delay: time.Millisecond, Loss: 0.05})
	client, server := tp.connPair(t)
	go echo(server)

	data := randomBytes(2, 256<<10)
	if got := roundTrip(t, client, data); !bytes.Equal(got, data) {
		t.Fatalf("got %d bytes back, want the %d sent, intact", len(got), len(data))
	}
	for _, dir := range [][2]*Host{{tp.client, tp.server}, {tp.server, tp.client}} {
		st, _ := tp.net.Stats(dir[0], dir[1])
		t.Logf("%s→%s: %+v", dir[0], dir[1], st)
		if st.Lost == 0 {
			t.Errorf("%s→%s lost no packets at 5%% loss over %d packets", dir[0], dir[1], st.Sent)
		}
	}
}

func TestPartitionStallsAndHealResumes(t *testing.T) {
	checkNoLeaks(t)
	tp := newTopology(t, LinkConfig{Delay: time.Millisecond})
	client, server := tp.connPair(t)

	if err := tp.net.Partition(tp.client, tp.server); err != nil {
		t.Fatal(err)
	}

	// Nothing crosses: a read times out.
	if _, err := server.Write([]byte("hello")); err != nil {
		t.Fatalf("write into a partition should buffer, got %v", err)
	}
	client.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	buf := make([]byte, 16)
	if n, err := client.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read across a partition = %d, %v; want a deadline error", n, err)
	}

	// Without acknowledgements the sender's buffer fills: a write stalls.
	payload := randomBytes(3, 64<<10)
	var sent bytes.Buffer
	sent.WriteString("hello")
	server.SetWriteDeadline(time.Now().Add(time.Second))
	for {
		n, err := server.Write(payload)
		sent.Write(payload[:n])
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("stalled write: %v, want a deadline error", err)
			}
			break
		}
		if sent.Len() > 64<<20 {
			t.Fatal("64 MiB written into a partition without stalling")
		}
	}
	t.Logf("%d bytes buffered before the write stalled", sent.Len())

	// Healing resumes the stream where it stopped, nothing lost.
	if err := tp.net.Heal(tp.client, tp.server); err != nil {
		t.Fatal(err)
	}
	server.SetWriteDeadline(time.Time{})
	go func() {
		server.Write([]byte("bye"))
		server.(interface{ CloseWrite() error }).CloseWrite()
	}()
	sent.WriteString("bye")
	client.SetReadDeadline(time.Now().Add(patience))
	got, err := io.ReadAll(client)
	if err != nil {
		t.Fatalf("read after heal: %v", err)
	}
	if !bytes.Equal(got, sent.Bytes()) {
		t.Fatalf("after heal read %d bytes, want the %d written, intact", len(got), sent.Len())
	}
	if st, _ := tp.net.Stats(tp.server, tp.client); st.Cut == 0 {
		t.Errorf("server→client stats = %+v, want packets cut by the partition", st)
	}
}

func TestBandwidthIsNeverExceeded(t *testing.T) {
	checkNoLeaks(t)
	tp := newTopology(t, LinkConfig{})
	client, server := tp.connPair(t)

	// Slow down only what the server sends, at run time.
	const bw = 1 << 20 // 1 MiB/s
	if err := tp.net.SetLinkOneWay(tp.server, tp.client, LinkConfig{Bandwidth: bw}); err != nil {
		t.Fatal(err)
	}
	if cfg, _ := tp.net.LinkConfig(tp.client, tp.server); cfg != (LinkConfig{}) {
		t.Errorf("client→server config = %+v, want it unchanged", cfg)
	}

	const size = 512 << 10
	start := time.Now()
	go func() {
		server.Write(randomBytes(4, size))
		server.Close()
	}()
	client.SetReadDeadline(time.Now().Add(patience))
	n, err := io.Copy(io.Discard, client)
	elapsed := time.Since(start)
	if err != nil || n != size {
		t.Fatalf("read %d bytes, %v; want %d", n, err, size)
	}
	// Headers only add to the time, so this lower bound holds on any
	// machine, however slow.
	if min := time.Duration(size * int64(time.Second) / bw); elapsed < min {
		t.Errorf("%d bytes took %v over a %d B/s link; the minimum is %v", size, elapsed, bw, min)
	}
	t.Logf("%d bytes in %v: %.0f KiB/s over a %d KiB/s link", size, elapsed, float64(size)/1024/elapsed.Seconds(), bw>>10)
}

func TestDelayAddsToEveryRoundTrip(t *testing.T) {
	checkNoLeaks(t)
	const delay = 20 * time.Millisecond
	tp := newTopology(t, LinkConfig{Delay: delay})
	client, server := tp.connPair(t)
	go echo(server)

	client.SetDeadline(time.Now().Add(patience))
	buf := make([]byte, 1)
	for i := range 5 {
		start := time.Now()
		if _, err := client.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(client, buf); err != nil {
			t.Fatal(err)
		}
		if rtt := time.Since(start); rtt < 2*delay {
			t.Errorf("round trip %d took %v, less than twice the %v delay", i, rtt, delay)
		}
	}
}

func TestCrashedServerGoesSilent(t *testing.T) {
	checkNoLeaks(t)
	tp := newTopology(t, LinkConfig{Delay: time.Millisecond})
	client, server := tp.connPair(t)

	tp.server.Crash()
	if _, err := server.Read(make([]byte, 1)); err == nil {
		t.Error("read on a crashed host succeeded")
	}
	// The client hears no FIN and no RST.
	if _, err := client.Write([]byte("anyone?")); err != nil {
		t.Fatalf("write to a silent peer should buffer, got %v", err)
	}
	client.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := client.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read from a crashed peer: %v, want a deadline error", err)
	}
}

func TestCloseUnblocksEverything(t *testing.T) {
	checkNoLeaks(t)
	tp := newTopology(t, LinkConfig{Delay: 5 * time.Millisecond, Loss: 0.01, Bandwidth: 10 << 20})
	client, server := tp.connPair(t)
	ln, err := tp.server.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}

	type result struct {
		op  string
		err error
	}
	errs := make(chan result, 3)
	go func() { _, err := ln.Accept(); errs <- result{"accept", err} }()
	go func() {
		// The server is sending; read until the stream breaks.
		buf := make([]byte, 32<<10)
		for {
			if _, err := client.Read(buf); err != nil {
				errs <- result{"read", err}
				return
			}
		}
	}()
	go func() {
		_, err := io.Copy(server, bytes.NewReader(randomBytes(5, 8<<20)))
		errs <- result{"write", err}
	}()
	time.Sleep(50 * time.Millisecond) // let them block; the test holds either way

	if err := tp.net.Close(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		select {
		case r := <-errs:
			t.Logf("%s: %v", r.op, r.err)
			if r.err == nil {
				t.Errorf("blocked %s returned no error after Close", r.op)
			}
		case <-time.After(patience):
			t.Fatal("Close left a call blocked")
		}
	}
	if _, err := tp.net.AddHost("late", netip.MustParseAddr("10.0.0.3")); !errors.Is(err, ErrClosed) {
		t.Errorf("AddHost after Close: %v, want ErrClosed", err)
	}
}

func TestHTTPOverSimnet(t *testing.T) {
	checkNoLeaks(t)
	tp := newTopology(t, LinkConfig{Delay: time.Millisecond, Loss: 0.01})
	ln, err := tp.server.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	body := randomBytes(7, 100<<10)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(body)
	})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	}()

	tr := &http.Transport{DialContext: tp.client.DialContext}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: patience}
	for range 3 { // the second and third reuse the connection
		resp, err := hc.Get("http://server/")
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("GET: %d bytes, %v; want the %d served", len(got), err, len(body))
		}
	}
}

func TestHostDialsItself(t *testing.T) {
	checkNoLeaks(t)
	tp := newTopology(t, LinkConfig{})
	ln, err := tp.server.Listen("tcp", "server:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			echo(c)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	c, err := tp.server.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := randomBytes(8, 10<<10)
	if got := roundTrip(t, c, data); !bytes.Equal(got, data) {
		t.Fatalf("echo to self returned %d bytes, want the %d sent", len(got), len(data))
	}
	if st, _ := tp.net.Stats(tp.server, tp.client); st.Sent != 0 {
		t.Errorf("traffic to self went onto the link: %+v", st)
	}
}

func TestLinkSettingsArePerPair(t *testing.T) {
	checkNoLeaks(t)
	n := New(Config{Seed: 2})
	defer n.Close()
	hosts := make(map[string]*Host)
	for i, name := range []string{"client", "server1", "server2"} {
		h, err := n.AddHost(name, netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}))
		if err != nil {
			t.Fatal(err)
		}
		hosts[name] = h
		ln, err := h.Listen("tcp", ":80")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go echo(c)
			}
		}()
	}
	client, s1, s2 := hosts["client"], hosts["server1"], hosts["server2"]
	for _, s := range []*Host{s1, s2} {
		if err := n.Link(client, s, LinkConfig{Delay: time.Millisecond}); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Partition(client, s1); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	c, err := client.DialContext(ctx, "tcp", "server2:80")
	if err != nil {
		t.Fatalf("partition client-server1 broke client-server2: %v", err)
	}
	if got := roundTrip(t, c, []byte("ping")); string(got) != "ping" {
		t.Errorf("client-server2 echo = %q", got)
	}
	c.Close()

	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelShort()
	if _, err := client.DialContext(short, "tcp", "server1:80"); err == nil {
		t.Error("dialled server1 across a partition")
	}
	// server1 and server2 share no link.
	if _, err := s1.DialContext(ctx, "tcp", "server2:80"); !errors.Is(err, syscall.EHOSTUNREACH) && !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("dial between unlinked servers: %v, want unreachable", err)
	}
}

func TestOneWayPartitionSilencesOneDirection(t *testing.T) {
	checkNoLeaks(t)
	tp := newTopology(t, LinkConfig{})
	client, server := tp.connPair(t)
	if err := tp.net.PartitionOneWay(tp.server, tp.client); err != nil {
		t.Fatal(err)
	}
	// The server still hears the client...
	client.Write([]byte("up"))
	server.SetReadDeadline(time.Now().Add(patience))
	buf := make([]byte, 2)
	if _, err := io.ReadFull(server, buf); err != nil || string(buf) != "up" {
		t.Fatalf("client→server across a one-way partition: %q, %v", buf, err)
	}
	// ...but the client does not hear the server.
	server.Write([]byte("down"))
	client.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := client.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("server→client across a one-way partition: %v, want a deadline error", err)
	}
	if err := tp.net.Heal(tp.client, tp.server); err != nil {
		t.Fatal(err)
	}
	client.SetReadDeadline(time.Now().Add(patience))
	got := make([]byte, 4)
	if _, err := io.ReadFull(client, got); err != nil || string(got) != "down" {
		t.Fatalf("after heal: %q, %v", got, err)
	}
}
