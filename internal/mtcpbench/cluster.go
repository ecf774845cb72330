package mtcpbench

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"sync"

	"hafe.dev/hafe/mtcp"
)

// cluster is n MTCP servers on loopback that know each other, each serving
// every accepted connection with the same application.
type cluster struct {
	addrs []string
	lns   []*mtcp.Listener
	wg    sync.WaitGroup

	mu      sync.Mutex
	conns   map[*mtcp.Conn]struct{} // accepted, still served
	closing bool
}

// newCluster starts n listeners on loopback sharing a fresh cluster key;
// see newClusterOn.
func newCluster(n int, mod func(i int, cfg *mtcp.ListenConfig), serve func(i int, c *mtcp.Conn)) (*cluster, error) {
	return newClusterOn(loopback{}, n, mod, serve)
}

// newClusterOn starts n listeners on hosts 0…n-1 of tr sharing a fresh
// cluster key. mod, if set, adjusts server i's configuration; serve runs
// on every accepted connection of server i in its own goroutine.
func newClusterOn(tr transport, n int, mod func(i int, cfg *mtcp.ListenConfig), serve func(i int, c *mtcp.Conn)) (*cluster, error) {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	cl := &cluster{conns: make(map[*mtcp.Conn]struct{})}
	var raws []net.Listener
	for i := range n {
		ln, self, err := tr.listen(i, false)
		if err != nil {
			for _, r := range raws {
				_ = r.Close()
			}
			return nil, fmt.Errorf("listen: %w", err)
		}
		raws = append(raws, ln)
		cl.addrs = append(cl.addrs, self)
	}
	for i, ln := range raws {
		cfg := mtcp.ListenConfig{Servers: cl.addrs, ClusterKey: key, Self: cl.addrs[i], PeerDial: tr.dialFrom(i)}
		if mod != nil {
			mod(i, &cfg)
		}
		l := mtcp.NewListener(ln, cfg)
		cl.lns = append(cl.lns, l)
		cl.wg.Add(1)
		go func() {
			defer cl.wg.Done()
			var conns sync.WaitGroup
			defer conns.Wait()
			for {
				c, err := l.AcceptMTCP()
				if err != nil {
					return
				}
				cl.mu.Lock()
				if cl.closing { // accepted in the race with Close
					cl.mu.Unlock()
					_ = c.Close()
					continue
				}
				cl.conns[c] = struct{}{}
				cl.mu.Unlock()
				conns.Add(1)
				go func() {
					defer conns.Done()
					serve(i, c)
					_ = c.Close()
					cl.mu.Lock()
					delete(cl.conns, c)
					cl.mu.Unlock()
				}()
			}
		}()
	}
	return cl, nil
}

// Close closes the listeners and the connections they accepted (a
// Listener leaves those open) and waits for the applications to return.
func (cl *cluster) Close() error {
	var errs []error
	for _, l := range cl.lns {
		errs = append(errs, l.Close())
	}
	cl.mu.Lock()
	cl.closing = true
	for c := range cl.conns {
		_ = c.Close()
	}
	cl.mu.Unlock()
	cl.wg.Wait()
	return errors.Join(errs...)
}
