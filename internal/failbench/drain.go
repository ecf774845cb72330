package failbench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"hafe.dev/hafe/internal/batchbench"
	"hafe.dev/hafe/mtcp"
)

// DrainOptions are "hafe bench drain"'s settings.
type DrainOptions struct {
	Cluster ClusterOptions
	// Conns is how many MTCP connections the drained front-end holds
	// (default 1000).
	Conns int
	// Batches of them run a batch when the SIGTERM comes (default 200).
	Batches int
	// BatchSize is the transfers per batch (default 300).
	BatchSize int
}

// DrainResult is what a drain measured.
type DrainResult struct {
	Options DrainOptions
	// Running is how many batches were still streaming at the SIGTERM.
	Running int
	// ServerTook is the drained front-end's own "mtcp drained" time;
	// ServerLeft the connections it reported left when its drain failed.
	ServerTook time.Duration
	ServerLeft int
	ServerOK   bool
	// ClientLast is the SIGTERM → the last connection's migration, on
	// the client's clock; Exit is the SIGTERM → the process's exit.
	ClientLast, Exit time.Duration
	Migrated         int // connections that moved (client side)
	FailedAttempts   int
	Triggers         map[string]int
	// BatchesDone completed with every line; BatchesFailed did not.
	BatchesDone, BatchesFailed int
	// IdleOK answered a request after the drain; IdleFailed did not.
	IdleOK, IdleFailed int
	Errors             []string
}

func (o DrainOptions) withDefaults() DrainOptions {
	if o.Conns <= 0 {
		o.Conns = 1000
	}
	if o.Batches < 0 {
		o.Batches = 0
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 300
	}
	if o.Cluster.Heartbeat <= 0 {
		o.Cluster.Heartbeat = 200 * time.Millisecond
	}
	if o.Cluster.OwnerLiveness <= 0 {
		o.Cluster.OwnerLiveness = time.Second
	}
	if o.Cluster.DrainTimeout <= 0 {
		o.Cluster.DrainTimeout = 30 * time.Second
	}
	return o
}

// Check reports settings that cannot work.
func (o DrainOptions) Check() error {
	switch {
	case o.Conns < 1:
		return errors.New("need --conns ≥ 1")
	case o.Batches < 0 || o.Batches > o.Conns:
		return errors.New("need 0 ≤ --batches ≤ --conns")
	case o.BatchSize < 1:
		return errors.New("need --batch-size ≥ 1")
	}
	return nil
}

// drainConn is one client connection.
type drainConn struct {
	c  *mtcp.Conn
	br *bufio.Reader
}

func (d *drainConn) get(path string) error {
	d.c.SetDeadline(time.Now().Add(30 * time.Second))
	defer d.c.SetDeadline(time.Time{})
	if _, err := fmt.Fprintf(d.c, "GET %s HTTP/1.1\r\nHost: hafe\r\n\r\n", path); err != nil {
		return err
	}
	resp, err := http.ReadResponse(d.br, nil)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET %s: status %d", path, resp.StatusCode)
	}
	return nil
}

// RunDrain opens Conns MTCP connections to the first front-end, starts
// Batches batches on as many of them, sends it SIGTERM and checks that
// every connection went on elsewhere.
func RunDrain(ctx context.Context, o DrainOptions, progress io.Writer) (*DrainResult, error) {
	o = o.withDefaults()
	if err := o.Check(); err != nil {
		return nil, err
	}
	o.Cluster.Log = progress
	if progress == nil {
		progress = io.Discard
	}
	c, err := startCluster(ctx, o.Cluster)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	res := &DrainResult{Options: o, Triggers: map[string]int{}}
	var (
		mu       sync.Mutex
		lastMove time.Time
	)
	dialer := &mtcp.Dialer{Servers: c.mtcpAddrs(0), OnMigration: func(s mtcp.MigrationStats) {
		mu.Lock()
		defer mu.Unlock()
		if s.Err != nil {
			res.FailedAttempts++
			return
		}
		res.Migrated++
		res.Triggers[s.Trigger]++
		lastMove = time.Now()
	}}
	victim := c.fes[0]
	conns := make([]*drainConn, o.Conns)
	defer func() {
		for _, dc := range conns {
			if dc != nil {
				dc.c.Close()
			}
		}
	}()
	// Open them a few at a time, each with one request answered.
	var wg sync.WaitGroup
	errs := make(chan error, o.Conns)
	sem := make(chan struct{}, 32)
	for i := range conns {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			mc, err := dialer.DialMTCP(ctx, victim.mtcpAddr)
			if err != nil {
				errs <- err
				return
			}
			dc := &drainConn{c: mc, br: bufio.NewReader(mc)}
			conns[i] = dc
			if err := dc.get("/healthz"); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, fmt.Errorf("open connections: %w", err)
	}
	fmt.Fprintf(progress, "%d MTCP connections open to %s\n", o.Conns, victim.id)

	// Batches on the first o.Batches connections.
	w := batchbench.Workload{BatchSize: o.BatchSize, Accounts: 100}
	// The drain starts once the first batches stream: with a pool of 20
	// database connections on the front-end the others are waiting for
	// one, their requests in flight all the same.
	var (
		heads   sync.WaitGroup
		batches sync.WaitGroup
		done    = make([]bool, o.Batches)
		berrs   = make([]error, o.Batches)
		want    = min(o.Batches, 20)
		nheads  int
	)
	heads.Add(want)
	for i := range o.Batches {
		dc := conns[i]
		batches.Go(func() {
			headed := false
			head := func() {
				headed = true
				mu.Lock()
				defer mu.Unlock()
				if nheads++; nheads <= want {
					heads.Done()
				}
			}
			defer func() {
				if !headed {
					head()
				}
			}()
			body := w.Body(i, 0)
			fmt.Fprintf(dc.c, "POST /v1/batches HTTP/1.1\r\nHost: hafe\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
			resp, err := http.ReadResponse(dc.br, nil)
			if err != nil {
				berrs[i] = err
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 {
				b, _ := io.ReadAll(resp.Body)
				berrs[i] = fmt.Errorf("status %d: %s", resp.StatusCode, b)
				return
			}
			lines, fin, other := 0, false, ""
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				if !headed {
					head()
				}
				switch l := sc.Bytes(); {
				case bytes.HasPrefix(l, []byte(`{"seq":`)):
					lines++
				case bytes.HasPrefix(l, []byte(`{"done":true`)):
					fin = true
				default:
					other = string(l)
				}
			}
			if err := sc.Err(); err != nil {
				berrs[i] = err
			} else if !fin || lines != o.BatchSize {
				berrs[i] = fmt.Errorf("%d of %d lines, done %v %.300s", lines, o.BatchSize, fin, other)
			}
			mu.Lock()
			done[i] = true
			mu.Unlock()
		})
	}
	headsIn := make(chan struct{})
	go func() { heads.Wait(); close(headsIn) }()
	select {
	case <-headsIn:
	case <-time.After(30 * time.Second):
		fmt.Fprintf(progress, "fewer than %d batches stream after 30s; draining anyway\n", want)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	mu.Lock()
	for _, d := range done {
		if !d {
			res.Running++
		}
	}
	mu.Unlock()
	fmt.Fprintf(progress, "%d batches streaming; SIGTERM %s\n", res.Running, victim.id)
	off := victim.logSize()
	t0 := time.Now()
	exited := victim.terminate()
	select {
	case <-exited:
		res.Exit = time.Since(t0)
	case <-time.After(o.Cluster.DrainTimeout + 30*time.Second):
		return nil, fmt.Errorf("%s did not exit", victim.id)
	}
	for _, l := range victim.readLog(off) {
		switch l.Msg {
		case "mtcp drained: every connection moved to another front-end":
			res.ServerOK = true
			res.ServerTook = l.duration("took")
		case "mtcp drain":
			f, _ := l.Attr["left"].(float64)
			res.ServerLeft = int(f)
		}
	}
	// Every batch must finish elsewhere.
	bdone := make(chan struct{})
	go func() { batches.Wait(); close(bdone) }()
	select {
	case <-bdone:
	case <-time.After(5 * time.Minute):
		return nil, errors.New("batches did not finish within 5 minutes of the drain")
	}
	mu.Lock()
	if !lastMove.IsZero() {
		res.ClientLast = lastMove.Sub(t0)
	}
	mu.Unlock()
	for i, err := range berrs {
		if err != nil {
			res.BatchesFailed++
			res.Errors = append(res.Errors, fmt.Sprintf("batch %d: %v", i, err))
		} else {
			res.BatchesDone++
		}
	}
	// And every connection must still answer.
	var idleMu sync.Mutex
	for _, dc := range conns {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			err := dc.get("/healthz")
			idleMu.Lock()
			defer idleMu.Unlock()
			if err != nil {
				res.IdleFailed++
				if len(res.Errors) < 20 {
					res.Errors = append(res.Errors, "request after the drain: "+err.Error())
				}
			} else {
				res.IdleOK++
			}
		})
	}
	wg.Wait()
	return res, nil
}

// Dropped is the connections that did not survive the drain.
func (r *DrainResult) Dropped() int { return r.IdleFailed + r.BatchesFailed }

// DrainTarget is the goal for draining.
const DrainTarget = 2 * time.Second

// Report prints the drain's figures and the verdict.
func (r *DrainResult) Report(w io.Writer) {
	o := r.Options
	mode := "eager"
	if o.Cluster.Lazy {
		mode = "lazy"
	}
	fmt.Fprintf(w, "\nSIGTERM of a hafe serve process holding %d MTCP connections (%s), %d of them with a batch of %d transfers (%d still streaming at the SIGTERM); %d other front-ends\n",
		o.Conns, mode, o.Batches, o.BatchSize, r.Running, max(o.Cluster.FrontEnds, 3)-1)
	srv := "drain failed"
	if r.ServerOK {
		srv = fmt.Sprintf("%.0fms", ms(r.ServerTook))
	} else if r.ServerLeft > 0 {
		srv = fmt.Sprintf("drain failed, %d left", r.ServerLeft)
	}
	fmt.Fprintf(w, "server's drain (its \"mtcp drained\" log line): %s\n", srv)
	fmt.Fprintf(w, "SIGTERM → last connection moved (client clock): %.0fms; → process exit: %.0fms\n", ms(r.ClientLast), ms(r.Exit))
	var trig []string
	for t, n := range r.Triggers {
		trig = append(trig, fmt.Sprintf("%s %d", t, n))
	}
	fmt.Fprintf(w, "migrations: %d (%s), failed attempts %d\n", r.Migrated, strings.Join(trig, ", "), r.FailedAttempts)
	fmt.Fprintf(w, "batches completed with every line: %d of %d; connections answering after the drain: %d of %d\n",
		r.BatchesDone, o.Batches, r.IdleOK, o.Conns)
	for _, e := range r.Errors {
		fmt.Fprintln(w, "  ", e)
	}
	// Done when the last connection is usable again on its new server.
	took := max(r.ServerTook, r.ClientLast)
	verdict := "meets"
	if took > DrainTarget || r.Dropped() > 0 || !r.ServerOK {
		verdict = "misses"
	}
	fmt.Fprintf(w, "\ndrain (SIGTERM → every connection moved, the later of the two clocks) %.0fms, %d dropped: %s the target of %v and 0 dropped\n", ms(took), r.Dropped(), verdict, DrainTarget)
}
