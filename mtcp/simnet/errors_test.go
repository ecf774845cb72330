package simnet

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

func TestDialErrorsLookLikeTheKernels(t *testing.T) {
	checkNoLeaks(t)
	tp := newTopology(t, LinkConfig{})
	lonely, err := tp.net.AddHost("lonely", netip.MustParseAddr("10.0.0.9"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()

	_, err = tp.client.DialContext(ctx, "tcp", "server:81")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial a closed port: %v, want ECONNREFUSED", err)
	}
	_, err = tp.client.DialContext(ctx, "tcp", lonely.Addr().String()+":80")
	if !errors.Is(err, syscall.EHOSTUNREACH) && !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("dial an unlinked host: %v, want EHOSTUNREACH or ENETUNREACH", err)
	}
	var dnsErr *net.DNSError
	if _, err = tp.client.DialContext(ctx, "tcp", "nowhere:80"); !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Errorf("dial an unknown name: %v, want a not-found DNS error", err)
	}
	if _, err = tp.client.DialContext(ctx, "udp", "server:80"); err == nil {
		t.Error("dial udp succeeded; only tcp is simulated")
	}
	if _, err = tp.client.Listen("tcp", "10.0.0.2:80"); !errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.Errorf("listen on another host's address: %v, want EADDRNOTAVAIL", err)
	}

	// A partitioned peer never answers: the dial lasts until its context ends.
	tp.net.Partition(tp.client, tp.server)
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelShort()
	if _, err = tp.client.DialContext(short, "tcp", "server:81"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("dial across a partition: %v, want context.DeadlineExceeded", err)
	}
}

func TestClosedConnAndListenerReportErrClosed(t *testing.T) {
	checkNoLeaks(t)
	tp := newTopology(t, LinkConfig{})
	client, server := tp.connPair(t)

	client.Close()
	if _, err := client.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after close: %v, want net.ErrClosed", err)
	}
	if _, err := client.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after close: %v, want net.ErrClosed", err)
	}
	server.SetReadDeadline(time.Now().Add(patience))
	if _, err := server.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("peer read after close: %v, want io.EOF", err)
	}

	ln, err := tp.server.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		accepted <- err
	}()
	time.Sleep(10 * time.Millisecond) // let Accept block; the test holds either way
	ln.Close()
	select {
	case err := <-accepted:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("accept on a closed listener: %v, want net.ErrClosed", err)
		}
	case <-time.After(patience):
		t.Fatal("Close did not unblock Accept")
	}
}

func TestTopologyErrors(t *testing.T) {
	checkNoLeaks(t)
	tp := newTopology(t, LinkConfig{})
	other, err := tp.net.AddHost("other", netip.MustParseAddr("10.0.0.3"))
	if err != nil {
		t.Fatal(err)
	}
	if err := tp.net.Link(tp.client, tp.server, LinkConfig{}); !errors.Is(err, ErrLinked) {
		t.Errorf("second Link: %v, want ErrLinked", err)
	}
	if err := tp.net.Partition(tp.client, other); !errors.Is(err, ErrNoLink) {
		t.Errorf("Partition of unlinked hosts: %v, want ErrNoLink", err)
	}
	if err := tp.net.SetLink(tp.client, tp.server, LinkConfig{Loss: 1.5}); err == nil {
		t.Error("SetLink accepted a loss of 1.5")
	}
	if _, err := tp.net.AddHost("dup", tp.client.Addr()); err == nil {
		t.Error("AddHost accepted a duplicate address")
	}
	if _, err := tp.net.AddHost("client", netip.MustParseAddr("10.0.0.4")); err == nil {
		t.Error("AddHost accepted a duplicate name")
	}
	if _, err := tp.net.AddHost("v6", netip.MustParseAddr("fd00::1")); err == nil {
		t.Error("AddHost accepted an IPv6 address")
	}
	if tp.net.Host("server") != tp.server {
		t.Error("Host(server) did not return the server")
	}
}
