package mtcp

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"
)

// TestImportStateReportsNoSnapshotWhenNoneWasExported: on a migrated-in
// connection whose application never exported a snapshot, ImportState
// says there is none (ok false); after an exported empty state it returns
// that state (ok true). Both hold for a pushed and a fetched state, and
// again after a second migration with no snapshot in between.
type imported struct {
	state []byte
	ok    bool
}

// serveImportsAndExportsOnX echoes, sends what ImportState said on
// imports when it starts, and exports an empty state after echoing an X.
func (tc *testCluster) serveImportsAndExportsOnX(imports chan<- imported) {
	tc.serve(func(c *Conn) {
		st, ok := c.ImportState()
		imports <- imported{st, ok}
		buf := make([]byte, 1024)
		for {
			n, err := c.Read(buf)
			if _, werr := c.Write(buf[:n]); werr != nil || err != nil {
				return
			}
			if bytes.IndexByte(buf[:n], 'X') >= 0 && c.ExportState([]byte{}) != nil {
				return
			}
		}
	})
}

func TestImportStateReportsNoSnapshotWhenNoneWasExported(t *testing.T) {
	checkLeaks(t)
	for _, noPrepare := range []bool{false, true} {
		imports := make(chan imported, 16)
		tc := newCluster(t, 3, nil, nil)
		tc.noPrepare = noPrepare
		tc.serveImportsAndExportsOnX(imports)
		next := func() imported {
			t.Helper()
			select {
			case im := <-imports:
				return im
			case <-time.After(10 * time.Second):
				t.Fatal("no server application started")
				return imported{}
			}
		}
		for _, export := range []bool{false, true} {
			c, err := testDialer(tc).DialMTCP(context.Background(), tc.addrs[0])
			if err != nil {
				t.Fatal(err)
			}
			if im := next(); im.ok {
				t.Fatalf("a new connection imports %q", im.state)
			}
			echoCheck(t, c)
			if export {
				if _, err := c.Write([]byte("X")); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
					t.Fatal(err)
				}
				echoCheck(t, c) // answered only after the export
			}
			for _, to := range tc.addrs[1:] {
				if err := c.Migrate(context.Background(), to); err != nil {
					t.Fatal(err)
				}
				im := next()
				if im.ok != export || len(im.state) != 0 {
					t.Errorf("fetch only %v, exported %v: after moving to %s ImportState = %q, %v", noPrepare, export, to, im.state, im.ok)
				}
				echoCheck(t, c)
			}
			_ = c.Close()
		}
	}
}

// The same from the snapshot store (eager mode, no peer channel): a
// record says whether the application ever exported a snapshot by its
// Seq, which counts snapshots over the connection's whole life.
func TestEagerImportStateReportsNoSnapshotWhenNoneWasExported(t *testing.T) {
	checkLeaks(t)
	imports := make(chan imported, 16)
	tc := newCluster(t, 3, NewMemStore(), func(cfg *ListenConfig) { cfg.ClusterKey = nil })
	tc.serveImportsAndExportsOnX(imports)
	for _, export := range []bool{false, true} {
		c, err := testDialer(tc).DialMTCP(context.Background(), tc.addrs[0])
		if err != nil {
			t.Fatal(err)
		}
		<-imports
		echoCheck(t, c)
		if export {
			if _, err := c.Write([]byte("X")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			echoCheck(t, c)
		}
		for _, to := range tc.addrs[1:] {
			if err := c.Migrate(context.Background(), to); err != nil {
				t.Fatal(err)
			}
			select {
			case im := <-imports:
				if im.ok != export {
					t.Errorf("exported %v: after moving to %s from the store ImportState ok = %v", export, to, im.ok)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no server application started")
			}
			echoCheck(t, c)
		}
		_ = c.Close()
	}
}
