package frontend

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"hafe.dev/hafe/api"
	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/mtcp"
	"hafe.dev/hafe/txn"
)

// Serving over MTCP. A client's MTCP connection can move to another
// front-end at any byte; the next front-end imports the connection's state
// and must write exactly the bytes this one would have written. So this
// is HTTP/1.1 served by hand, not net/http's server (whose Date header and
// timing-dependent answers a successor could not reproduce), and every
// answer is either:
//
//   - a batch's stream: a head fixed when the batch is opened (recorded
//     in the state), then one chunk per report line, read from the
//     outcomes in the database, then the summary; or
//   - anything else, computed in memory first and recorded in the state
//     whole before its first byte is written.
//
// The state is recorded at each request boundary (with the input read past
// it) and amended, keeping that boundary's offsets, once the answer is
// decided: the successor re-reads the request itself from the input the
// connection logged, and answers it as recorded. Eager mode saves the
// boundary only with its amendment (mtcp's RecordState): one database write
// per request, before any byte of the answer.

// connState is what a front-end exports for an MTCP connection.
type connState struct {
	// Served counts the requests answered before the current one; with
	// the connection id it names the current request's batch.
	Served int64 `json:"served"`
	// Left is input read past the previous request but not yet parsed.
	Left []byte `json:"left,omitempty"`
	// The answer to the current request, once decided: a batch stream or
	// a whole reply.
	Batch *batchDecision `json:"batch,omitempty"`
	Reply []byte         `json:"reply,omitempty"`
	// Close: the connection ends after the current answer.
	Close bool `json:"close,omitempty"`
}

// batchDecision fixes a batch answer's head.
type batchDecision struct {
	ID   string `json:"id"`
	Head []byte `json:"head"`
}

// maxDrainBytes bounds the unread rest of a request body read to keep a
// connection for its next request; a longer rest closes it instead.
const maxDrainBytes = 256 << 10

// ServeMTCP serves the API on connections accepted from ln until ln is
// closed, then closes the connections it still serves (Drain ln first to
// move them to other front-ends). Give ln a SnapshotStore (eager mode) to
// survive a crash of this front-end, not only a drain or a path failure.
func (s *Server) ServeMTCP(ln *mtcp.Listener) error {
	s.mtcp.Store(ln)
	var (
		mu    sync.Mutex
		conns = map[*mtcp.Conn]bool{}
		wg    sync.WaitGroup
	)
	defer func() {
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	for {
		c, err := ln.AcceptMTCP()
		if err != nil {
			return err
		}
		mu.Lock()
		conns[c] = true
		mu.Unlock()
		wg.Go(func() {
			s.serveMTCPConn(c)
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
		})
	}
}

// mtcpExchange is one request on an MTCP connection, for the handlers
// that answer differently there (postBatch).
type mtcpExchange struct {
	s    *Server
	conn *mtcp.Conn
	st   *connState
	// migrated: the first request after the connection moved here.
	migrated bool
	// decided is the answer recorded before the move, if any.
	decided *batchDecision
	// batchID is set by postBatch once it holds the batch's lease.
	batchID  string
	reqClose bool
}

type mtcpExchangeKey struct{}

func mtcpExchangeFrom(ctx context.Context) *mtcpExchange {
	x, _ := ctx.Value(mtcpExchangeKey{}).(*mtcpExchange)
	return x
}

// handOff asks the client to move the connection to another front-end,
// which takes the batch over and answers the rest of the request: a batch
// this one could not finish (it lost its database) goes on elsewhere, as
// an MTCP client has no Idempotency-Key to retry with. It reports whether
// the connection moved.
func (x *mtcpExchange) handOff(log *slog.Logger) bool {
	for _, to := range x.s.mtcpPeers() {
		if err := x.conn.Redirect(to); err != nil {
			return false
		}
		t := time.NewTimer(handOffWait)
		select {
		case <-x.conn.Done():
			t.Stop()
			log.Info("handed the batch's connection to another front-end", "to", to)
			return true
		case <-t.C:
		}
	}
	return false
}

// handOffWait is how long handOff waits for a client to follow a redirect
// before it tries the next front-end.
const handOffWait = 5 * time.Second

// batchKey names the batch of the current request when the client sent no
// Idempotency-Key: the same on every front-end the connection visits. It
// starts with a space, which no Idempotency-Key may hold, so no client's
// key names it.
func (x *mtcpExchange) batchKey() string {
	return " mtcp:" + x.conn.ID().String() + ":" + strconv.FormatInt(x.st.Served, 10)
}

func (s *Server) serveMTCPConn(c *mtcp.Conn) {
	defer c.Close()
	log := s.log.With("conn", c.ID().String())
	var st connState
	imported := false
	if b, ok := c.ImportState(); ok {
		if err := json.Unmarshal(b, &st); err != nil {
			log.Error("mtcp: cannot read the state of a migrated connection", "err", err)
			return
		}
		imported = true
	}
	in := &prefixReader{pending: st.Left, r: c, limit: -1}
	br := bufio.NewReader(in)
	for {
		if !imported {
			st = connState{Served: st.Served, Left: append(peekAll(br), in.rest()...)}
			// Eager mode saves this boundary with the next request's
			// decision, before anything of its answer is written: one
			// save per request. A crash before then resumes from the
			// previous request, answered again as before.
			if err := recordState(c, &st); err != nil {
				log.Debug("mtcp: export state", "err", err)
				return
			}
		}
		migrated := imported
		imported = false
		c.SetReadDeadline(time.Now().Add(s.cfg.IdleTimeout))
		if _, err := br.Peek(1); err != nil {
			return
		}
		c.SetReadDeadline(time.Now().Add(s.cfg.ReadHeaderTimeout))
		in.limit = maxHeaderBytes
		req, err := http.ReadRequest(br)
		in.limit = -1
		c.SetReadDeadline(time.Time{})
		if err != nil {
			if errors.Is(err, mtcp.ErrMigrated) {
				return
			}
			st.Close = true
			e := refuse(400, "bad_request", "cannot read the request as HTTP/1.1: %v", err)
			if errors.Is(err, errHeaderTooLarge) {
				e = refuse(431, "headers_too_large", "the request's headers take more than %d bytes", maxHeaderBytes)
			}
			s.metrics.refused.WithLabelValues(e.code).Inc()
			s.answer(c, &st, plainReply(e, true))
			return
		}
		if req.Header.Get("Expect") == "100-continue" {
			if _, err := io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n"); err != nil {
				return
			}
		}
		if st.Reply != nil {
			// Answered before the move: consume the request as then.
			if !st.Close {
				io.Copy(io.Discard, req.Body)
			}
			if _, err := c.Write(st.Reply); err != nil || st.Close {
				return
			}
		} else if !s.serveMTCPRequest(c, &st, req, migrated) {
			return
		}
		st.Served++
	}
}

// serveMTCPRequest answers one request; false ends the connection.
func (s *Server) serveMTCPRequest(c *mtcp.Conn, st *connState, req *http.Request, migrated bool) bool {
	x := &mtcpExchange{s: s, conn: c, st: st, migrated: migrated, decided: st.Batch, reqClose: req.Close}
	w := &mtcpResponse{x: x, header: http.Header{}}
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), mtcpExchangeKey{}, x))
	defer cancel()
	// A connection that moved away (or ended) takes its request along:
	// whatever runs for it here stops at once, not at its next write.
	go func() {
		select {
		case <-c.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	req = req.WithContext(ctx)
	req.RemoteAddr = c.RemoteAddr().String()
	s.router.ServeHTTP(w, req)
	s.busy.set(c, false)
	if w.err != nil {
		return false
	}
	if w.streaming {
		if _, err := io.WriteString(c, "0\r\n\r\n"); err != nil {
			return false
		}
		return !st.Close
	}
	if w.status == 0 {
		w.status = 200
	}
	st.Close = x.reqClose || !drained(req.Body)
	reply := renderReply(w.status, w.header, w.buf.Bytes(), st.Close)
	return s.answer(c, st, reply)
}

// answer records a whole reply in the state, then writes it.
func (s *Server) answer(c *mtcp.Conn, st *connState, reply []byte) bool {
	st.Reply = reply
	if err := amendState(c, st); err != nil && !errors.Is(err, mtcp.ErrStateTooLarge) {
		// Too large to record: written anyway; a move in the middle of
		// it would be answered again, which for a large reply (a batch
		// list) may differ.
		return false
	}
	if _, err := c.Write(reply); err != nil {
		return false
	}
	return !st.Close
}

func recordState(c *mtcp.Conn, st *connState) error {
	b, _ := json.Marshal(st)
	return c.RecordState(b)
}

func amendState(c *mtcp.Conn, st *connState) error {
	b, _ := json.Marshal(st)
	return c.AmendState(b)
}

// plainReply is a refusal rendered as a whole reply.
func plainReply(e *requestError, close bool) []byte {
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	body, _ := json.Marshal(api.Refusal{Error: api.RefusalError{Code: e.code, Message: e.message}})
	return renderReply(e.status, h, append(body, '\n'), close)
}

// maxHeaderBytes bounds a request's line and headers over MTCP, as
// net/http's server bounds them (http.DefaultMaxHeaderBytes).
const maxHeaderBytes = http.DefaultMaxHeaderBytes

var errHeaderTooLarge = errors.New("request headers too large")

// renderReply renders a whole HTTP/1.1 response with its headers sorted
// and no Date: the same bytes on any front-end.
func renderReply(status int, h http.Header, body []byte, close bool) []byte {
	var b bytes.Buffer
	h = h.Clone()
	h.Del("Transfer-Encoding")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	writeHead(&b, status, h, close)
	b.Write(body)
	return b.Bytes()
}

func writeHead(b *bytes.Buffer, status int, h http.Header, close bool) {
	fmt.Fprintf(b, "HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
	if close {
		h.Set("Connection", "close")
	}
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range h[k] {
			fmt.Fprintf(b, "%s: %s\r\n", k, v)
		}
	}
	b.WriteString("\r\n")
}

// drained reads the rest of a request body, if short; false when it is not.
func drained(body io.Reader) bool {
	n, err := io.Copy(io.Discard, io.LimitReader(body, maxDrainBytes+1))
	return err == nil && n <= maxDrainBytes
}

// mtcpResponse is the http.ResponseWriter of a request on an MTCP
// connection. A batch's answer (postBatch has set batchID when it writes
// the 200 head) streams in chunks; any other is kept whole for
// serveMTCPRequest to record and write.
type mtcpResponse struct {
	x         *mtcpExchange
	header    http.Header
	status    int
	buf       bytes.Buffer
	streaming bool
	err       error
}

func (w *mtcpResponse) Header() http.Header { return w.header }

func (w *mtcpResponse) WriteHeader(status int) {
	if w.status != 0 || status < 200 {
		return
	}
	w.status = status
	if status == 200 && w.x.batchID != "" {
		w.err = w.startStream()
	}
}

// startStream fixes the batch answer's head, records it and writes it.
// After a move the head recorded then is written again, not a new one
// (its request id and front-end name would differ).
func (w *mtcpResponse) startStream() error {
	x := w.x
	w.streaming = true
	x.s.busy.set(x.conn, true)
	if d := x.decided; d != nil {
		if d.ID != x.batchID {
			return fmt.Errorf("mtcp: the connection's request became batch %s, but now opens batch %s", d.ID, x.batchID)
		}
		// What the connection holds of the head need not be written
		// again (it would be dropped).
		k := min(x.conn.OutputHeld(), len(d.Head))
		if err := x.conn.SkipOutput(k); err != nil {
			return err
		}
		_, err := x.conn.Write(d.Head[k:])
		return err
	}
	var head bytes.Buffer
	h := w.header.Clone()
	h.Set("Transfer-Encoding", "chunked")
	x.st.Close = x.reqClose
	writeHead(&head, 200, h, x.st.Close)
	x.st.Batch = &batchDecision{ID: x.batchID, Head: head.Bytes()}
	if err := amendState(x.conn, x.st); err != nil {
		return err
	}
	_, err := x.conn.Write(head.Bytes())
	return err
}

func (w *mtcpResponse) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(200)
	}
	if w.err != nil {
		return 0, w.err
	}
	if !w.streaming {
		return w.buf.Write(p)
	}
	if len(p) == 0 {
		return 0, nil
	}
	chunk := make([]byte, 0, len(p)+16)
	chunk = strconv.AppendInt(chunk, int64(len(p)), 16)
	chunk = append(chunk, "\r\n"...)
	chunk = append(chunk, p...)
	chunk = append(chunk, "\r\n"...)
	if _, err := w.x.conn.Write(chunk); err != nil {
		w.err = err
		return 0, err
	}
	return len(p), nil
}

// heldReports finds how many of the batch's report lines the connection
// already holds past the head (after a move: what the client has, and in
// lazy mode what the previous front-end wrote), skips them and says so,
// so that Run starts after them instead of reading them from the database
// to write them again only to be dropped. Any failure just means reading
// them.
//
// If the connection holds more than the recorded lines account for (nor
// the start of the next one, nor the summary after the last) the database
// lost outcomes the client was told of (a failover to a standby that had
// not received them): that comes back as a *txn.LostReportsError.
func (x *mtcpExchange) heldReports(ctx context.Context, slots int) (txn.Reported, *txn.LostReportsError) {
	held := x.conn.OutputHeld()
	if x.decided == nil || held == 0 {
		return txn.Reported{}, nil
	}
	sizes, err := backendext.ListOutcomeSizes(ctx, x.s.pool, x.batchID)
	if err != nil {
		return txn.Reported{}, nil
	}
	var r txn.Reported
	skip := 0
	for _, o := range sizes {
		n := chunkLen(o.Bytes + 1) // the line and its newline
		if o.Seq != r.Slots+1 || skip+n > held {
			break
		}
		skip += n
		r.Slots++
		if o.Status == txn.StatusCommitted {
			r.Committed++
		} else {
			r.Aborted++
		}
	}
	if skip < held && r.Slots < slots && (r.Slots >= len(sizes) || sizes[r.Slots].Seq != r.Slots+1) {
		return r, &txn.LostReportsError{BatchID: x.batchID, Reported: r.Slots + 1, Recorded: r.Slots, AtLeast: true}
	}
	if x.conn.SkipOutput(skip) != nil {
		return txn.Reported{}, nil
	}
	return r, nil
}

// skipHeld skips whatever output the connection holds: what comes next is
// written after it.
func (x *mtcpExchange) skipHeld() { x.conn.SkipOutput(x.conn.OutputHeld()) }

// chunkLen is the length of a chunk of n bytes as Write frames it.
func chunkLen(n int) int { return len(strconv.FormatInt(int64(n), 16)) + 2 + n + 2 }

// FlushError and Flush: chunks are written as they come.
func (w *mtcpResponse) FlushError() error { return w.err }
func (w *mtcpResponse) Flush()            {}

func (w *mtcpResponse) SetReadDeadline(t time.Time) error  { return w.x.conn.SetReadDeadline(t) }
func (w *mtcpResponse) SetWriteDeadline(t time.Time) error { return w.x.conn.SetWriteDeadline(t) }

// prefixReader reads pending first, then r; while limit is not negative it
// reads at most limit more bytes, then fails with errHeaderTooLarge.
type prefixReader struct {
	pending []byte
	r       io.Reader
	limit   int64
}

func (p *prefixReader) Read(b []byte) (int, error) {
	if p.limit == 0 {
		return 0, errHeaderTooLarge
	}
	if p.limit > 0 && int64(len(b)) > p.limit {
		b = b[:p.limit]
	}
	var n int
	var err error
	if len(p.pending) > 0 {
		n = copy(b, p.pending)
		p.pending = p.pending[n:]
	} else {
		n, err = p.r.Read(b)
	}
	if p.limit > 0 {
		p.limit -= int64(n)
	}
	return n, err
}

// rest is what is still pending.
func (p *prefixReader) rest() []byte { return bytes.Clone(p.pending) }

// peekAll is what br has buffered, without consuming it.
func peekAll(br *bufio.Reader) []byte {
	b, _ := br.Peek(br.Buffered())
	return bytes.Clone(b)
}
