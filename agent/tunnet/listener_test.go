package tunnet

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"hafe.dev/hafe/mtcp/simnet"
)

// The listener is tested on a simulated network's stacks: what it does
// with a netstack does not depend on where the packets come from.
func newNet(t *testing.T) (client, server *simnet.Host) {
	n := simnet.New(simnet.Config{Seed: 1})
	t.Cleanup(func() { n.Close() })
	client, _ = n.AddHost("client", netip.MustParseAddr("10.0.0.1"))
	server, _ = n.AddHost("server", netip.MustParseAddr("10.0.0.2"))
	if err := n.Link(client, server, simnet.LinkConfig{}); err != nil {
		t.Fatal(err)
	}
	return client, server
}

// checkNoLeaks fails the test if, after its cleanups, more goroutines run
// than before it. Call it first, so its cleanup runs last.
func checkNoLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > before; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Errorf("%d goroutines left, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
				return
			}
		}
	})
}

func TestListenerAcceptsOnEveryServiceAndAbortResets(t *testing.T) {
	checkNoLeaks(t)
	client, server := newNet(t)
	l, err := listen(server.Stack(), []netip.AddrPort{netip.MustParseAddrPort("10.0.0.2:80"), netip.MustParseAddrPort("10.0.0.2:81")})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ports := map[int]net.Conn{}
	for _, addr := range []string{"10.0.0.2:80", "10.0.0.2:81"} {
		c, err := client.DialContext(ctx, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if got := s.RemoteAddr().String(); got != c.LocalAddr().String() {
			t.Errorf("accepted from %s, the client is %s", got, c.LocalAddr())
		}
		ports[s.LocalAddr().(*net.TCPAddr).Port] = c
		if _, err := s.Write([]byte("hi")); err != nil {
			t.Fatal(err)
		}
		sc := s.(*Conn)
		// WaitReadable returns once the client's bytes are there.
		waited := make(chan struct{})
		go func() { sc.WaitReadable(); close(waited) }()
		c.Write([]byte("?"))
		select {
		case <-waited:
		case <-time.After(5 * time.Second):
			t.Fatal("WaitReadable still waits with a byte to read")
		}
		if b := make([]byte, 1); func() bool { n, _ := sc.Read(b); return n != 1 }() {
			t.Fatal("no byte to read after WaitReadable")
		}
		if s.LocalAddr().(*net.TCPAddr).Port == 80 {
			// A half-close: the client reads the bytes, then the end.
			if err := sc.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(c)
			if string(b) != "hi" || err != nil {
				t.Errorf("after a half-close the client read %q, %v; want \"hi\" and the end", b, err)
			}
			sc.Close()
			sc.Close() // twice is harmless
		} else {
			// An abort: the client sees an error, not an end of stream.
			buf := make([]byte, 2)
			io.ReadFull(c, buf)
			// An abort ends a WaitReadable too.
			waited := make(chan struct{})
			go func() { sc.WaitReadable(); close(waited) }()
			time.Sleep(10 * time.Millisecond)
			sc.Abort()
			select {
			case <-waited:
			case <-time.After(5 * time.Second):
				t.Fatal("WaitReadable still waits after Abort")
			}
			if n, err := c.Read(buf); err == nil || errors.Is(err, io.EOF) {
				t.Errorf("after an abort the client read %d bytes, %v; want a reset", n, err)
			}
			sc.Close() // after Abort, nothing
		}
	}
	if len(ports) != 2 {
		t.Fatalf("accepted on ports %v, want 80 and 81", ports)
	}

	accepted := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		accepted <- err
	}()
	time.Sleep(20 * time.Millisecond)
	l.Close()
	select {
	case err := <-accepted:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still waits after Close")
	}
	if c, err := client.DialContext(ctx, "tcp", "10.0.0.2:80"); err == nil {
		c.Close()
		t.Error("a connection to a closed service was accepted")
	}
}
