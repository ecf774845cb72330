package mtcp

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"hafe.dev/hafe/mtcp/internal/wire"
)

// countingListener accepts TCP connections on loopback, counts them and
// closes them at once.
func countingListener(t *testing.T) (addr string, accepted *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	accepted = new(atomic.Int64)
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			_ = nc.Close()
		}
	}()
	return ln.Addr().String(), accepted
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// migrateNaming is a MIGRATE for a connection no one has, naming origin.
func migrateNaming(origin string) []byte {
	m := wire.Migrate{ConnID: randomID(), Counter: 1, Origin: origin}
	m.MAC = migrateMAC(randomSecret(), m)
	return wire.AppendMigrate(nil, m)
}

// wantOpaqueRefusal checks that an answer is a refusal whose reason tells
// nothing about the network behind the server.
func wantOpaqueRefusal(t *testing.T, typ wire.Type, payload []byte, addrs ...string) wire.Refuse {
	t.Helper()
	if typ != wire.TypeRefuse {
		t.Fatalf("got %s, want REFUSE", typ)
	}
	r, err := wire.ParseRefuse(payload)
	if err != nil {
		t.Fatal(err)
	}
	reason := strings.ToLower(r.Reason)
	for _, leak := range append([]string{"127.0.0.1", "dial", "refused", "timeout", "eof", "reset", "peer "}, addrs...) {
		if strings.Contains(reason, leak) {
			t.Fatalf("refusal reason %q tells %q", r.Reason, leak)
		}
	}
	return r
}

// TestMigrateNamingUnknownOriginIsRefusedWithoutDial: anyone can send a
// MIGRATE naming any origin. A server fetches state only from the servers
// it knows, so it never dials an address a stranger names (no port
// scanning through it), and its refusal says nothing of the network. With
// a snapshot store it still looks the connection up there.
func TestMigrateNamingUnknownOriginIsRefusedWithoutDial(t *testing.T) {
	checkLeaks(t)
	for _, store := range []SnapshotStore{nil, NewMemStore()} {
		stranger, accepted := countingListener(t)
		tc := newCluster(t, 1, store, nil)
		typ, p := rawExchange(t, tc.addrs[0], migrateNaming(stranger))
		if n := accepted.Load(); n != 0 {
			t.Errorf("store %v: the server dialled the origin a stranger named (%d connections)", store != nil, n)
		}
		r := wantOpaqueRefusal(t, typ, p, stranger)
		want := RefuseStateUnavailable // no one to ask
		if store != nil {
			want = RefuseUnknownConn // the store does not know it
		}
		if RefusalCode(r.Code) != want {
			t.Errorf("store %v: refused with %v (%q), want %v", store != nil, RefusalCode(r.Code), r.Reason, want)
		}
	}
}

// loadFailingStore is a MemStore whose Load fails the way a database
// client does when its server is down.
type loadFailingStore struct{ *MemStore }

func (loadFailingStore) Load(context.Context, ConnID) (*SnapshotRecord, error) {
	return nil, errors.New("dial tcp 10.9.8.7:5432: connect: connection refused")
}

// TestOriginUnreachableRefusalEchoesNoNetworkError: when a known origin
// cannot be reached, or the snapshot store fails, the client hears a fixed
// reason, never the network error (addresses, "connection refused").
func TestOriginUnreachableRefusalEchoesNoNetworkError(t *testing.T) {
	checkLeaks(t)
	down := closedAddr(t)
	tc := newCluster(t, 1, nil, nil)
	tc.lns[0].SetServers(append(slices.Clone(tc.addrs), down))
	typ, p := rawExchange(t, tc.addrs[0], migrateNaming(down))
	if r := wantOpaqueRefusal(t, typ, p, down); RefusalCode(r.Code) != RefuseStateUnavailable {
		t.Errorf("known origin down: refused with %v (%q)", RefusalCode(r.Code), r.Reason)
	}

	failing := newCluster(t, 1, loadFailingStore{NewMemStore()}, nil)
	typ, p = rawExchange(t, failing.addrs[0], migrateNaming(failing.addrs[0]))
	if r := wantOpaqueRefusal(t, typ, p, "10.9.8.7"); RefusalCode(r.Code) != RefuseStateUnavailable {
		t.Errorf("store down: refused with %v (%q)", RefusalCode(r.Code), r.Reason)
	}
}
