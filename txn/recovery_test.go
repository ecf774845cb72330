package txn

import (
	"bytes"
	"context"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	backendext "hafe.dev/hafe/backend-ext"
)

// commitCutter is a TCP proxy in front of PostgreSQL that, once armed, lets
// the n-th COMMIT reach the server and then cuts the connection before the
// server's answer reaches the client: the commit happened, the client cannot
// know.
type commitCutter struct {
	ln      net.Listener
	target  string
	cutAt   atomic.Int32 // cut the connection carrying the cutAt-th COMMIT reply; 0 = never
	commits atomic.Int32
	cut     atomic.Int32
	wg      sync.WaitGroup
}

var commitComplete = []byte("C\x00\x00\x00\x0bCOMMIT\x00")

func newCommitCutter(t *testing.T, target string) *commitCutter {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &commitCutter{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

func (p *commitCutter) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.wg.Add(2)
		go func() { defer p.wg.Done(); io.Copy(s, c); s.Close() }()
		go func() { defer p.wg.Done(); p.serverToClient(s, c) }()
	}
}

func (p *commitCutter) serverToClient(s, c net.Conn) {
	defer c.Close()
	defer s.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := s.Read(buf)
		if n > 0 {
			if k := int32(bytes.Count(buf[:n], commitComplete)); k > 0 {
				if total := p.commits.Add(k); p.cutAt.Load() > 0 && total >= p.cutAt.Load() && p.cut.Load() == 0 {
					p.cut.Add(1)
					return
				}
			}
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func TestLostCommitReplyIsSettledByLookupNotRerun(t *testing.T) {
	url := newDB(t)
	proxy := newCommitCutter(t, net.JoinHostPort("127.0.0.1", itoa(server.Port())))
	proxied := strings.Replace(url, "127.0.0.1:"+itoa(server.Port()), proxy.ln.Addr().String(), 1)
	e, _ := newExecutor(t, proxied, "fe1", Config{})
	direct := newPool(t, url, "checker")
	proxy.cutAt.Store(2)
	b := Batch{Transactions: []Transaction{counted(1), counted(2), counted(3)}}
	l := open(t, e, "lostcommit", 3)
	sum, err := e.Run(context.Background(), l, b, (&stream{}).emit)
	if err != nil || sum.Committed != 3 {
		t.Fatalf("sum %+v err %v", sum, err)
	}
	if proxy.cut.Load() != 1 {
		t.Fatal("the proxy never cut a commit reply")
	}
	for slot, runs := range runsPerSlot(t, direct) {
		if runs != 1 {
			t.Errorf("slot %d committed %d times", slot, runs)
		}
	}
	o, _, _ := backendext.GetOutcome(context.Background(), direct, l.BatchID, 2)
	if o.Attempts != 1 {
		t.Fatalf("slot 2 was attempted %d times; its commit should have been found, not redone", o.Attempts)
	}
}

func TestPostgresRestartMidBatch(t *testing.T) {
	url := newDB(t)
	e, _ := newExecutor(t, url, "fe1", Config{SettleTimeout: time.Minute})
	const n = 12
	var txns []Transaction
	for i := 1; i <= n; i++ {
		txns = append(txns, counted(i, Statement{Query: "SELECT pg_sleep(0.05)"}))
	}
	restarted := make(chan error, 1)
	var lines int
	sum, err := e.Run(context.Background(), open(t, e, "restart", n), Batch{Transactions: txns}, func([]byte) error {
		lines++
		if lines == 4 {
			go func() { restarted <- server.Restart(context.Background()) }()
		}
		return nil
	})
	if rerr := <-restarted; rerr != nil {
		t.Fatal(rerr)
	}
	if err != nil || sum.Committed != n {
		t.Fatalf("sum %+v err %v", sum, err)
	}
	check := newPool(t, url, "checker")
	runs := runsPerSlot(t, check)
	for i := 1; i <= n; i++ {
		if runs[i] != 1 {
			t.Errorf("slot %d committed %d times", i, runs[i])
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
