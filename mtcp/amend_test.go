package mtcp

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"
)

// serveDecisions answers each request line with 40 lines that carry a
// decision drawn at random once the request is read: a stand-in for a
// front-end that turns a request into a batch with a fresh id. The
// decision is recorded with AmendState, so a server that takes the
// connection over re-reads the same request and answers with the same
// decision; without it the answer would change in the middle.
func serveDecisions(c *Conn) {
	decided := ""
	if st, ok := c.ImportState(); ok {
		decided = string(st)
	}
	br := bufio.NewReader(c)
	for {
		if decided == "" && c.ExportState(nil) != nil {
			return
		}
		req, err := br.ReadString('\n')
		if err != nil {
			return
		}
		if decided == "" {
			b := make([]byte, 8)
			rand.Read(b)
			decided = hex.EncodeToString(b)
			if c.AmendState([]byte(decided)) != nil {
				return
			}
		}
		for i := range 40 {
			if _, err := fmt.Fprintf(c, "%s %s %02d\n", strings.TrimSpace(req), decided, i); err != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
		decided = ""
	}
}

// TestAmendedStateSurvivesMigration: an answer in progress goes on with
// the same decision on the next server, lazily (peer transfer) and
// eagerly (from the store, the origin crashed).
func TestAmendedStateSurvivesMigration(t *testing.T) {
	for _, eager := range []bool{false, true} {
		t.Run(fmt.Sprintf("eager=%v", eager), func(t *testing.T) {
			checkLeaks(t)
			var store SnapshotStore
			if eager {
				store = NewMemStore()
			}
			tc := newCluster(t, 3, store, nil)
			tc.serve(serveDecisions)
			c, err := testDialer(tc).DialMTCP(context.Background(), tc.addrs[0])
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			br := bufio.NewReader(c)
			for r, to := range []int{1, 2, 0} {
				if _, err := fmt.Fprintf(c, "req%d\n", r); err != nil {
					t.Fatal(err)
				}
				var first string
				for i := range 40 {
					if i == 10 {
						if eager && r == 0 {
							tc.lns[0].crash()
						}
						if err := c.Migrate(context.Background(), tc.addrs[to]); err != nil {
							t.Fatal(err)
						}
					}
					line, err := br.ReadString('\n')
					if err != nil {
						t.Fatalf("request %d line %d: %v", r, i, err)
					}
					var req, dec string
					var n int
					if _, err := fmt.Sscanf(line, "%s %s %d", &req, &dec, &n); err != nil || req != fmt.Sprintf("req%d", r) || n != i {
						t.Fatalf("request %d line %d reads %q", r, i, line)
					}
					if first == "" {
						first = dec
					} else if dec != first {
						t.Fatalf("request %d: the decision changed from %s to %s at line %d", r, first, dec, i)
					}
				}
				if eager && r == 0 {
					break // the crashed server does not come back
				}
			}
		})
	}
}

// TestDeadlineSetAfterStop: setting a deadline on a closed connection (an
// HTTP handler lifting its write deadline after the connection ended)
// returns at once.
func TestDeadlineSetAfterStop(t *testing.T) {
	d := makeDeadline()
	d.set(time.Now().Add(time.Hour))
	d.stop()
	done := make(chan struct{})
	go func() { d.set(time.Time{}); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("set after stop hangs")
	}
}

// serveNumbers writes 200 fixed-length numbered lines; after a migration
// it skips the lines the connection already holds instead of writing them
// again to be dropped.
func serveNumbers(c *Conn, skipped chan<- int) {
	const lineLen = 11 // "line 00000\n"
	first := 0
	if _, ok := c.ImportState(); ok {
		held := c.OutputHeld()
		first = held / lineLen
		skipped <- first
		if c.SkipOutput(first*lineLen) != nil || c.SkipOutput(held) == nil && held > first*lineLen {
			return // skipping past what is held must fail
		}
	} else if c.ExportState([]byte("numbers")) != nil {
		return
	}
	for i := first; i < 200; i++ {
		if _, err := fmt.Fprintf(c, "line %05d\n", i); err != nil {
			return
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// TestSkipOutputAfterMigration: a server that skips the output the
// connection holds after a move (lazily: all the origin wrote; eagerly:
// what the client received) gives the client the same stream.
func TestSkipOutputAfterMigration(t *testing.T) {
	for _, eager := range []bool{false, true} {
		t.Run(fmt.Sprintf("eager=%v", eager), func(t *testing.T) {
			checkLeaks(t)
			var store SnapshotStore
			if eager {
				store = NewMemStore()
			}
			tc := newCluster(t, 2, store, nil)
			skipped := make(chan int, 4)
			tc.serve(func(c *Conn) { serveNumbers(c, skipped) })
			c, err := testDialer(tc).DialMTCP(context.Background(), tc.addrs[0])
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			br := bufio.NewReader(c)
			for i := range 200 {
				if i == 60 {
					if eager {
						tc.lns[0].crash()
					}
					if err := c.Migrate(context.Background(), tc.addrs[1]); err != nil {
						t.Fatal(err)
					}
				}
				line, err := br.ReadString('\n')
				if err != nil || line != fmt.Sprintf("line %05d\n", i) {
					t.Fatalf("line %d reads %q, %v", i, line, err)
				}
			}
			if n := <-skipped; n < 60 {
				t.Errorf("the new server skipped %d lines; the client had 60", n)
			}
		})
	}
}
