package frontend

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"hafe.dev/hafe/api"
	"hafe.dev/hafe/txn"
)

// ErrShuttingDown is the cause a server gives the request contexts it
// cancels when it stops before its batches are done; their clients are
// still told, with an "interrupted" line, to resume elsewhere.
var ErrShuttingDown = errors.New("front-end shutting down")

// maxKeyLength bounds Idempotency-Key values.
const maxKeyLength = 255

// postBatch runs a batch and streams one NDJSON line per transaction as its
// outcome becomes durable, then a summary line. With an Idempotency-Key a
// retry of the same request resumes the batch: recorded slots are reported
// from the back-end with identical bytes, the rest run.
func (s *Server) postBatch(w http.ResponseWriter, r *http.Request) {
	if !s.batches.begin() {
		// Over MTCP the connection moves instead (a drain is moving them
		// all): the next front-end reads the request again and runs it.
		if mx := mtcpExchangeFrom(r.Context()); mx != nil && mx.handOff(s.requestLog(r, "frontend")) {
			return
		}
		w.Header().Set("Retry-After", "1")
		s.refuse(w, refuse(503, "draining", "this front-end is draining; send the batch to another one"))
		return
	}
	defer s.batches.end()
	start := time.Now()

	// Only JSON: an HTML form or a fetch without a preflight on any web
	// page a user visits can send a form, text or no content type across
	// sites, but not application/json.
	ct := r.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ct); err != nil || !(mt == "application/json" || strings.HasSuffix(mt, "+json")) {
		if ct == "" {
			ct = "no Content-Type"
		}
		s.refuse(w, refuse(415, "unsupported_media_type", "send the batch with Content-Type: application/json, not %q", ct))
		return
	}
	keys := r.Header.Values(api.HeaderIdempotencyKey)
	if len(keys) > 1 {
		s.refuse(w, refuse(400, "bad_idempotency_key", "send one Idempotency-Key header, not %d", len(keys)))
		return
	}
	key := r.Header.Get(api.HeaderIdempotencyKey)
	if err := checkKey(key); err != nil {
		s.refuse(w, err)
		return
	}
	if r.ContentLength > s.cfg.Limits.MaxBodyBytes {
		// Refused before reading a byte of it: the client learns at once,
		// and the front-end spends nothing on it.
		s.refuse(w, refuse(413, "body_too_large", "the body is %d bytes; the limit is %d", r.ContentLength, s.cfg.Limits.MaxBodyBytes))
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, s.cfg.Limits.MaxBodyBytes)
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Now().Add(s.cfg.BodyReadTimeout))
	req, err := decodeBatch(r.Body, s.cfg.Templates, s.cfg.AllowRawSQL, s.cfg.Limits)
	rc.SetReadDeadline(time.Time{})
	if err != nil {
		var re *requestError
		errors.As(err, &re)
		s.refuse(w, re)
		return
	}
	if err := s.numbers.check(r.Context(), req.calls); err != nil {
		s.refuse(w, err)
		return
	}
	log := s.requestLog(r, "frontend")
	mx := mtcpExchangeFrom(r.Context())
	// A connection that moved here takes its batch over at once, without
	// waiting for the old owner's heartbeat to age: when its state says
	// the request became that batch, or when the batch's key is the
	// connection's own. A client's key alone proves nothing: another
	// connection may be running that batch.
	forced := mx != nil && mx.migrated && (mx.decided != nil || key == "")
	if key != "" {
		log = log.With("key", key)
		key = r.Context().Value(clientKey{}).(string) + ":" + key
	} else if mx != nil {
		// Over MTCP the batch has a key of its own, so that the
		// front-end the connection moves to finds it.
		key = r.Context().Value(clientKey{}).(string) + ":" + mx.batchKey()
	}
	open := txn.OpenRequest{IdempotencyKey: key, RequestHash: req.hash, NumTxns: len(req.batch.Transactions),
		Log: s.requestLog(r, "txn"), Migrated: forced}
	lease, err := s.exec.Open(r.Context(), open)
	if err != nil && mx != nil && mx.decided != nil {
		// A batch whose head the client already has cannot be refused
		// (the refusal would land in the middle of its stream): wait
		// for the database, as a running batch does (a failover).
		lease, err = s.openWhenBack(r.Context(), open, err, log)
	}
	var busy *txn.BusyError
	switch {
	case errors.Is(err, txn.ErrKeyReused):
		s.refuse(w, refuse(422, "idempotency_key_reused", "this Idempotency-Key was used with a different request body"))
		return
	case errors.As(err, &busy):
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(busy.RetryAfter.Seconds()))))
		s.refuse(w, refuse(409, "batch_in_progress", "the batch for this Idempotency-Key is still running on front-end %s; retry later", busy.Owner))
		return
	case err != nil:
		log.Error("open batch", "err", err)
		w.Header().Set("Retry-After", "1")
		s.refuse(w, refuse(503, "database_unavailable", "cannot reach the database to start the batch"))
		return
	}
	if lease.Resumed {
		s.metrics.resumed.Inc()
	}
	if forced {
		s.watchPreviousOwner(lease)
	}
	log = log.With("batch", lease.BatchID, "transactions", len(req.batch.Transactions))
	log.Info("batch started", "resumed", lease.Resumed, "taken_over", lease.TakenOver)

	if mx != nil {
		mx.batchID = lease.BatchID
	}
	var gone *txn.LostReportsError
	if mx != nil && mx.decided != nil && mx.decided.ID != lease.BatchID {
		// The connection's request had become another batch, which the
		// database no longer knows: a failover lost it. Its head is
		// written again as before (the client has it), then the end.
		gone = &txn.LostReportsError{BatchID: mx.decided.ID, Reported: 0, BatchMissing: true}
		s.exec.Release(lease)
		mx.batchID = mx.decided.ID
	}
	h := w.Header()
	h.Set("Content-Type", "application/x-ndjson")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	h.Set(api.HeaderBatchID, lease.BatchID)
	h.Set(api.HeaderFrontEnd, s.cfg.ID)
	if lease.Resumed {
		h.Set(api.HeaderResumed, "true")
	}
	w.WriteHeader(http.StatusOK)
	// endLost ends a moved connection's stream whose reported lines the
	// database lost: what the connection holds is not written again.
	endLost := func(lost *txn.LostReportsError) {
		mx.skipHeld()
		s.metrics.batches.WithLabelValues("interrupted").Inc()
		w.Write(append(s.reportLost(lost, "mtcp", "request_id", w.Header().Get("X-Request-Id")), '\n'))
	}
	if gone != nil {
		endLost(gone)
		return
	}
	if mx != nil && mx.migrated {
		var lost *txn.LostReportsError
		if lease.Reported, lost = mx.heldReports(r.Context(), len(req.batch.Transactions)); lost != nil {
			// Nor are their slots run again.
			s.exec.Release(lease)
			endLost(lost)
			return
		}
	}
	// Each write gets WriteTimeout: a client that stops reading loses the
	// connection, and the executor releases its batch. The deadline is
	// lifted at the end, for the next request on the connection.
	defer rc.SetWriteDeadline(time.Time{})
	emit := func(line []byte) error {
		rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		if _, err := w.Write(append(line, '\n')); err != nil {
			return err
		}
		return rc.Flush()
	}
	sum, err := s.exec.Run(r.Context(), lease, req.batch, func(line []byte) error {
		s.metrics.reported.Inc()
		return emit(line)
	})
	took := time.Since(start)
	s.metrics.batchSeconds.Observe(took.Seconds())
	log = log.With("committed", sum.Committed, "aborted", sum.Aborted, "duration", took)
	if err != nil {
		s.metrics.batches.WithLabelValues("interrupted").Inc()
		clientLeft := r.Context().Err() != nil && !errors.Is(context.Cause(r.Context()), ErrShuttingDown)
		level := slog.LevelWarn
		if clientLeft {
			level = slog.LevelInfo // the client's retry resumes it
		}
		if lost := asLost(err); lost != nil && !clientLeft {
			via := "http"
			if mx != nil {
				via = "mtcp"
			}
			emit(s.reportLost(lost, via, "request_id", w.Header().Get("X-Request-Id")))
			return
		}
		log.Log(r.Context(), level, "batch interrupted", "reported", sum.Committed+sum.Aborted, "client_left", clientLeft, "err", err)
		if !clientLeft && mx != nil && mx.handOff(log) {
			// Another front-end answers the rest, in the same response.
			return
		}
		if !clientLeft {
			// The client gets the reason; the summary line is missing, so
			// it knows to retry with the same key.
			emit(errorLine("interrupted", err.Error()+"; retry with the same Idempotency-Key to resume"))
		}
		return
	}
	s.metrics.batches.WithLabelValues("done").Inc()
	log.Info("batch finished")
	emit(sum.Line())
}

// openWhenBack tries Open again while the database is away, at most
// Executor.SettleTimeout after first failed.
func (s *Server) openWhenBack(ctx context.Context, req txn.OpenRequest, first error, log *slog.Logger) (*txn.Lease, error) {
	settle := s.cfg.Executor.SettleTimeout
	if settle <= 0 {
		settle = time.Minute
	}
	deadline := time.Now().Add(settle)
	err := first
	log.Warn("cannot open the moved connection's batch; waiting for the database", "err", err, "settle_timeout", settle)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		var busy *txn.BusyError
		if errors.Is(err, txn.ErrKeyReused) || errors.As(err, &busy) {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
		var l *txn.Lease
		if l, err = s.exec.Open(ctx, req); err == nil {
			return l, nil
		}
	}
	return nil, err
}

func (s *Server) refuse(w http.ResponseWriter, e *requestError) {
	s.metrics.refused.WithLabelValues(e.code).Inc()
	writeError(w, e)
}

func errorLine(code, message string) []byte {
	b, _ := jsonMarshal(api.Refusal{Error: api.RefusalError{Code: code, Message: message}})
	return b
}

// checkKey accepts 1..255 visible ASCII characters.
func checkKey(key string) *requestError {
	if len(key) > maxKeyLength {
		return refuse(400, "bad_idempotency_key", "Idempotency-Key is longer than %d characters", maxKeyLength)
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x21 || key[i] > 0x7e {
			return refuse(400, "bad_idempotency_key", "Idempotency-Key must be visible ASCII characters")
		}
	}
	return nil
}
