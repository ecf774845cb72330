package mtcp

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"hafe.dev/hafe/mtcp/internal/wire"
)

// rawExchange sends one frame on a fresh TCP connection and returns the
// first frame of the answer.
func rawExchange(t *testing.T, addr string, frame []byte) (wire.Type, []byte) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	typ, payload, err := exchange(context.Background(), nc, bufio.NewReader(nc), frame, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return typ, payload
}

func wantRefusal(t *testing.T, typ wire.Type, payload []byte, code RefusalCode) {
	t.Helper()
	if typ != wire.TypeRefuse {
		t.Fatalf("got %s, want REFUSE %s", typ, code)
	}
	r, err := wire.ParseRefuse(payload)
	if err != nil || RefusalCode(r.Code) != code {
		t.Fatalf("refused with %v (%q), want %s", RefusalCode(r.Code), r.Reason, code)
	}
}

// echoCheck proves a connection still works end to end.
func echoCheck(t *testing.T, c *Conn) {
	t.Helper()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
		t.Fatalf("echo after refusal: %q %v", b, err)
	}
}

func signedMigrate(c *Conn, counter uint64, origin string) wire.Migrate {
	c.mu.Lock()
	m := wire.Migrate{ConnID: c.id, Counter: counter, RecvOff: c.in.end(), Origin: origin}
	c.mu.Unlock()
	m.MAC = migrateMAC(c.secret, m)
	return m
}

func TestMigrateRefusals(t *testing.T) {
	checkLeaks(t)
	for _, store := range []SnapshotStore{nil, NewMemStore()} {
		tc := newCluster(t, 2, store, nil)
		tc.echo()
		c, err := testDialer(tc).DialMTCP(context.Background(), tc.addrs[0])
		if err != nil {
			t.Fatal(err)
		}
		echoCheck(t, c)
		origin := tc.addrs[0]

		t.Run("ForgedMAC", func(t *testing.T) {
			m := signedMigrate(c, 100, origin)
			m.MAC[0] ^= 1
			for _, to := range tc.addrs { // locally and via the peer channel
				typ, p := rawExchange(t, to, wire.AppendMigrate(nil, m))
				wantRefusal(t, typ, p, RefuseBadMAC)
			}
			// A MAC over other fields does not verify either.
			m = signedMigrate(c, 100, origin)
			m.RecvOff++
			typ, p := rawExchange(t, tc.addrs[1], wire.AppendMigrate(nil, m))
			wantRefusal(t, typ, p, RefuseBadMAC)
			echoCheck(t, c)
		})
		t.Run("ReplayedCounter", func(t *testing.T) {
			// Counter 0 was never used, but it is not above the last one.
			m := signedMigrate(c, 0, origin)
			for _, to := range tc.addrs {
				typ, p := rawExchange(t, to, wire.AppendMigrate(nil, m))
				wantRefusal(t, typ, p, RefuseReplayedCounter)
			}
			// A MIGRATE that worked once does not work twice.
			if err := c.Migrate(context.Background(), tc.addrs[0]); err != nil {
				t.Fatal(err)
			}
			c.mu.Lock()
			used := c.cl.counter
			c.mu.Unlock()
			m = signedMigrate(c, used, origin)
			for _, to := range tc.addrs {
				typ, p := rawExchange(t, to, wire.AppendMigrate(nil, m))
				wantRefusal(t, typ, p, RefuseReplayedCounter)
			}
			echoCheck(t, c)
		})
		t.Run("UnknownConnection", func(t *testing.T) {
			m := wire.Migrate{ConnID: randomID(), Counter: 1, Origin: origin}
			m.MAC = migrateMAC(randomSecret(), m)
			for _, to := range tc.addrs {
				typ, p := rawExchange(t, to, wire.AppendMigrate(nil, m))
				wantRefusal(t, typ, p, RefuseUnknownConn)
			}
		})
		t.Run("MalformedFirstFrame", func(t *testing.T) {
			typ, p := rawExchange(t, tc.addrs[0], wire.AppendOffset(nil, wire.TypeAck, 5))
			wantRefusal(t, typ, p, RefuseBadRequest)
			typ, p = rawExchange(t, tc.addrs[0], wire.AppendHeader(nil, wire.TypeMigrate, 0))
			wantRefusal(t, typ, p, RefuseBadRequest)
			echoCheck(t, c)
		})
		t.Run("ClientSeesRefusalError", func(t *testing.T) {
			// An origin that does not exist, and no PREPARE to the real one.
			c.mu.Lock()
			c.cl.self, c.cl.d.NoPrepare = "127.0.0.1:1", true
			c.mu.Unlock()
			err := c.Migrate(context.Background(), tc.addrs[1])
			c.mu.Lock()
			c.cl.self, c.cl.d.NoPrepare = origin, false
			c.mu.Unlock()
			if store == nil && !errors.Is(err, &RefusalError{Code: RefuseStateUnavailable}) {
				t.Fatalf("lazy migration with a dead origin: %v", err)
			}
			if store != nil && err != nil { // eager: the store has the state
				t.Fatalf("eager migration with a dead origin: %v", err)
			}
			echoCheck(t, c)
		})
		_ = c.Close()
	}
}

func TestUnauthenticatedPeerIsRefused(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 1, nil, nil)
	tc.echo()
	c, err := testDialer(tc).DialMTCP(context.Background(), tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// A server with another cluster key cannot take the connection: the
	// origin refuses its peer channel and never freezes the connection.
	rogue := newCluster(t, 1, nil, func(cfg *ListenConfig) {
		cfg.ClusterKey = []byte("some other key of the right size")
		cfg.Servers = append(slices.Clone(cfg.Servers), tc.addrs[0]) // so it asks the origin
	})
	rogue.echo()
	err = c.Migrate(context.Background(), rogue.addrs[0])
	if !errors.Is(err, &RefusalError{Code: RefuseStateUnavailable}) {
		t.Fatalf("migration to a server outside the cluster: %v", err)
	}
	echoCheck(t, c)

	// A raw peer that cannot prove the key gets REFUSE(unauthenticated).
	nc, err := net.Dial("tcp", tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	br := bufio.NewReader(nc)
	typ, _, err := exchange(context.Background(), nc, br, wire.AppendPeerHello(nil, wire.PeerHello{To: tc.addrs[0]}), 5*time.Second)
	if err != nil || typ != wire.TypePeerChallenge {
		t.Fatalf("peer hello answered %s %v", typ, err)
	}
	typ, p, err := exchange(context.Background(), nc, br, wire.AppendPeerAuth(nil, wire.PeerAuth{MAC: make([]byte, 32)}), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	wantRefusal(t, typ, p, RefuseUnauthenticated)

	// Without a cluster key the peer channel is closed altogether.
	closed := newCluster(t, 1, nil, func(cfg *ListenConfig) { cfg.ClusterKey = nil })
	typ, p = rawExchange(t, closed.addrs[0], wire.AppendPeerHello(nil, wire.PeerHello{}))
	wantRefusal(t, typ, p, RefuseUnauthenticated)
}

// TestMigrateRightAfterDialAndMigrate: the server has the connection in
// its table before the client hears of it, so a MIGRATE sent at once finds
// it (after a dial, and after a migration).
func TestMigrateRightAfterDialAndMigrate(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 2, nil, nil)
	tc.echo()
	for i := 0; i < 20; i++ {
		c, err := testDialer(tc).DialMTCP(context.Background(), tc.addrs[0])
		if err != nil {
			t.Fatal(err)
		}
		for k := 1; k <= 3; k++ {
			if err := c.Migrate(context.Background(), tc.addrs[k%2]); err != nil {
				t.Fatalf("round %d, migration %d: %v", i, k, err)
			}
		}
		echoCheck(t, c)
		_ = c.Close()
	}
}
