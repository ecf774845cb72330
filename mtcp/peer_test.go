package mtcp

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"hafe.dev/hafe/mtcp/internal/wire"
)

// frameOf rebuilds a frame from its type and payload.
func frameOf(t wire.Type, payload []byte) []byte {
	return append(wire.AppendHeader(nil, t, len(payload)), payload...)
}

// relayPeerHandshake is a man in the middle that holds no cluster key: it
// accepts the peer channel a server opens to it, opens its own channel to
// target, and shuttles the handshake frames between the two, with the
// hello unchanged or, with retarget, addressed to target. dialled reports
// whether a server dialled it; nc is its channel to target when the
// handshake went through.
func relayPeerHandshake(ln net.Listener, target string, retarget bool) (nc net.Conn, br *bufio.Reader, dialled bool, err error) {
	fail := func(format string, args ...any) (net.Conn, *bufio.Reader, bool, error) {
		if nc != nil {
			_ = nc.Close()
		}
		return nil, nil, dialled, fmt.Errorf(format, args...)
	}
	dialler, err := ln.Accept()
	if err != nil {
		return fail("%v", err)
	}
	defer dialler.Close() // of no use once its proof is relayed
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = dialler.SetDeadline(time.Now().Add(5 * time.Second))
	dr := bufio.NewReader(dialler)
	var hdr [wire.HeaderLen]byte
	typ, hello, err := wire.ReadFrame(dr, &hdr, nil)
	if err != nil || typ != wire.TypePeerHello {
		return fail("the dialling server sent %s %v, not a hello", typ, err)
	}
	dialled = true
	if retarget {
		h, err := wire.ParsePeerHello(hello)
		if err != nil {
			return fail("%v", err)
		}
		h.To = target
		hello = wire.AppendPeerHello(nil, h)[wire.HeaderLen:]
	}
	if nc, err = net.DialTimeout("tcp", target, 5*time.Second); err != nil {
		return fail("%v", err)
	}
	br = bufio.NewReader(nc)
	typ, challenge, err := exchange(ctx, nc, br, frameOf(wire.TypePeerHello, hello), 5*time.Second)
	if err != nil || typ != wire.TypePeerChallenge {
		return fail("the target answered the relayed hello with %s %v", typ, err)
	}
	typ, proof, err := exchange(ctx, dialler, dr, frameOf(typ, challenge), 5*time.Second)
	if err != nil || typ != wire.TypePeerAuth {
		return fail("the dialling server answered the relayed challenge with %s %v", typ, err)
	}
	if _, err := nc.Write(frameOf(typ, proof)); err != nil {
		return fail("%v", err)
	}
	return nc, br, true, nil
}

// TestPeerHandshakeRefusesRelayedProof: a party without the cluster key
// makes server B dial it (a MIGRATE naming it as the origin; it holds an
// address B lists, say a retired server's) and relays B's handshake to
// server C, as it is or addressed to C. C must not take the relayer for a
// peer: a proof is good only between the two servers it was made for.
// Otherwise the relayer could fetch states from C and push made-up ones.
func TestPeerHandshakeRefusesRelayedProof(t *testing.T) {
	checkLeaks(t)
	relay, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	tc := newCluster(t, 2, nil, nil)
	tc.echo()
	b, c := tc.lns[0], tc.lns[1]
	b.SetServers(append(slices.Clone(tc.addrs), relay.Addr().String()))

	for _, retarget := range []bool{false, true} {
		t.Run(fmt.Sprintf("retarget=%v", retarget), func(t *testing.T) {
			type relayed struct {
				nc      net.Conn
				br      *bufio.Reader
				dialled bool
				err     error
			}
			res := make(chan relayed, 1)
			go func() {
				nc, br, dialled, err := relayPeerHandshake(relay, c.Self(), retarget)
				res <- relayed{nc, br, dialled, err}
			}()
			_, _ = rawExchange(t, b.Self(), migrateNaming(relay.Addr().String()))
			r := <-res
			if !r.dialled {
				t.Fatalf("B never dialled the relayer: %v", r.err)
			}
			if r.err != nil {
				t.Logf("relay failed: %v", r.err)
			} else {
				defer r.nc.Close()
				useRelayedChannel(t, r.nc, r.br, c.Self())
			}
			if c.numPushed() != 0 {
				t.Error("C holds a pushed state from the relayer")
			}
		})
	}
}

// useRelayedChannel tries, on a channel to the server named to, what only
// a peer may do: FETCH and PUSH.
func useRelayedChannel(t *testing.T, nc net.Conn, br *bufio.Reader, to string) {
	t.Helper()
	ctx := context.Background()
	// C answers a FETCH only on an authenticated channel.
	fetch := wire.Fetch{Req: 1, Migrate: wire.Migrate{ConnID: randomID(), Counter: 1, Origin: to}}
	typ, _, err := exchange(ctx, nc, br, wire.AppendFetch(nil, fetch), 5*time.Second)
	if err == nil && typ == wire.TypeTransfer {
		t.Error("C answered the relayer's FETCH")
	}
	// A made-up connection, MIGRATE and all.
	secret := randomSecret()
	m := wire.Migrate{ConnID: randomID(), Counter: 1, Origin: nc.LocalAddr().String()}
	m.MAC = migrateMAC(secret, m)
	push := wire.Push{Req: 2, Migrate: m, State: wire.ConnState{ConnID: m.ConnID, Secret: secret, State: []byte("made up")}}
	typ, p, err := exchange(ctx, nc, br, wire.AppendPush(nil, push), 5*time.Second)
	if err == nil && typ == wire.TypePushed {
		if ans, _ := wire.ParsePushed(p); ans.Code == 0 {
			t.Error("C kept a state the relayer made up")
		}
	}
}

// TestPushIsKeptOnlyFromTheConnectionsOrigin: a server keeps a pushed
// state only from the server that owns the connection (the authenticated
// peer is the origin the client's MIGRATE names), and only that server
// can withdraw it.
func TestPushIsKeptOnlyFromTheConnectionsOrigin(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 3, nil, nil)
	origin, target, other := tc.lns[0], tc.lns[1], tc.lns[2]
	secret := randomSecret()
	m := wire.Migrate{ConnID: randomID(), Counter: 1, Origin: origin.Self()}
	m.MAC = migrateMAC(secret, m)
	push := wire.Push{Migrate: m, State: wire.ConnState{ConnID: m.ConnID, Secret: secret}}
	ctx := context.Background()

	ans, _, err := other.peers.push(ctx, target.Self(), push)
	if err != nil {
		t.Fatal(err)
	}
	if ans.Code == 0 || target.numPushed() != 0 {
		t.Fatalf("a state pushed by %s for a connection of %s was kept (%+v)", other.Self(), origin.Self(), ans)
	}
	if ans, _, err := origin.peers.push(ctx, target.Self(), push); err != nil || ans.Code != 0 {
		t.Fatalf("the origin's own push: %+v %v", ans, err)
	}
	drop := wire.DropPush{ConnID: m.ConnID, Counter: m.Counter}
	if err := other.peers.dropPush(ctx, target.Self(), drop); err != nil {
		t.Fatal(err)
	}
	if target.numPushed() != 1 {
		t.Fatal("another server withdrew the origin's push")
	}
	if err := origin.peers.dropPush(ctx, target.Self(), drop); err != nil {
		t.Fatal(err)
	}
	if target.numPushed() != 0 {
		t.Fatal("the origin could not withdraw its push")
	}
}
