package mtcp

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// TestHTTPOverMTCP: a Dialer plugs into http.Transport and a Listener into
// http.Server. Between two requests on one kept-alive connection the
// connection migrates; the new server's http.Server replays the first
// request from the input log (its answer, identical, is dropped) and
// answers the second.
func TestHTTPOverMTCP(t *testing.T) {
	checkLeaks(t)
	tc := newCluster(t, 2, nil, nil)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Date"] = nil // deterministic responses
		fmt.Fprintf(w, "hello %s", r.URL.Path)
	})
	var srvs []*http.Server
	var wg sync.WaitGroup
	for _, l := range tc.lns {
		s := &http.Server{Handler: handler}
		srvs = append(srvs, s)
		wg.Add(1)
		go func() { defer wg.Done(); _ = s.Serve(l) }()
	}
	defer func() {
		for _, s := range srvs {
			_ = s.Close()
		}
		wg.Wait()
	}()

	d := testDialer(tc)
	var (
		mu   sync.Mutex
		conn *Conn
	)
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialMTCP(ctx, addr)
		mu.Lock()
		conn = c
		mu.Unlock()
		return c, err
	}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: time.Minute}
	get := func(path string) string {
		resp, err := client.Get("http://" + tc.addrs[0] + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got := get("/one"); got != "hello /one" {
		t.Fatalf("first response %q", got)
	}
	mu.Lock()
	c := conn
	mu.Unlock()
	if err := c.Migrate(context.Background(), tc.addrs[1]); err != nil {
		t.Fatal(err)
	}
	if got := get("/two"); got != "hello /two" {
		t.Fatalf("second response %q", got)
	}
	mu.Lock()
	same := conn == c
	mu.Unlock()
	if !same || c.Server() != tc.addrs[1] {
		t.Fatalf("second request not on the migrated connection (same %v, server %s)", same, c.Server())
	}
}
