package mtcp

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"
)

// TestFullDuplexEchoNeverStalls: a client that writes and reads at once
// against an echo server must not wait for a path timeout. Before credit
// flow control the server's path reader stopped reading the socket once
// MaxRecvBuffer of input was unread, so the client's ACKs queued behind its
// DATA never arrived, and both sides waited until the path was declared
// dead and migrated.
func TestFullDuplexEchoNeverStalls(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 2, nil, nil)
	tc.echo()
	var migrations atomic.Int64
	d := &Dialer{Logger: testLogger(), Servers: tc.addrs, OnMigration: func(MigrationStats) { migrations.Add(1) }}
	c, err := d.DialMTCP(context.Background(), tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := make([]byte, 8<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range msg {
		msg[i] = byte(rng.Uint32())
	}
	werr := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, bytes.NewReader(msg))
		werr <- err
	}()
	// Bounded so a stall fails the test instead of hanging it; the
	// default PathTimeout (10 s) is what a stall used to end in.
	_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("echo differs")
	}
	if n := migrations.Load(); n != 0 {
		t.Fatalf("%d migrations during a full-duplex echo on a healthy path", n)
	}
}

// TestUnreadInputKeepsThePathAlive: a server application that stops
// reading holds its client back by credit alone; the path keeps carrying
// pings and pongs, so the client sees a live path and does not migrate,
// and every byte arrives once the application reads again.
func TestUnreadInputKeepsThePathAlive(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 2, nil, nil)
	resume := make(chan struct{})
	got := make(chan []byte, 1)
	tc.serve(func(c *Conn) {
		<-resume
		b, _ := io.ReadAll(c)
		got <- b
	})
	var migrations atomic.Int64
	d := testDialer(tc)
	d.Triggers = Triggers{KeepAlive: 50 * time.Millisecond, PathTimeout: 200 * time.Millisecond}
	d.OnMigration = func(MigrationStats) { migrations.Add(1) }
	c, err := d.DialMTCP(context.Background(), tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := bytes.Repeat([]byte("0123456789abcdef"), 4<<20/16) // 4× the receive window
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	time.Sleep(5 * d.Triggers.PathTimeout) // the client waits on credit meanwhile
	if n := migrations.Load(); n != 0 {
		t.Fatalf("%d migrations while the server application did not read", n)
	}
	close(resume)
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, msg) {
		t.Fatalf("server read %d bytes, want %d", len(b), len(msg))
	}
}
