package client

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
)

// lineKind classifies one complete line of a response stream.
type lineKind uint8

const (
	lineNew      lineKind = iota // a transaction line the caller has not had: deliver it
	lineReplayed                 // a transaction line the caller has had, identical: skip it
	lineDone                     // the summary line: the batch is complete
	lineError                    // an error line: the stream ends unfinished
)

// wireLine is the part of a response line the client reads.
type wireLine struct {
	Seq          *int   `json:"seq"`
	Status       string `json:"status"`
	Done         bool   `json:"done"`
	BatchID      string `json:"batch_id"`
	Transactions int    `json:"transactions"`
	Committed    int    `json:"committed"`
	Aborted      int    `json:"aborted"`
	Error        *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// tracker is the client's record of one batch across attempts: which lines
// the caller has had (by digest, so memory stays small whatever the
// results), the totals, and the batch id. It does no I/O, so every case of
// replay and resumption is a unit test.
type tracker struct {
	digests   [][sha256.Size]byte // digests[i] is the line of seq i+1
	committed int
	aborted   int
	batchID   string

	// per attempt
	url     string
	lastSeq int // seq of this attempt's previous line, 0 before the first
}

// delivered is how many transaction lines the caller has had.
func (t *tracker) delivered() int { return len(t.digests) }

// startAttempt resets the per-attempt state for a stream from url that
// belongs to batch batchID (its Hafe-Batch-Id header, possibly empty).
func (t *tracker) startAttempt(url, batchID string) error {
	t.url, t.lastSeq = url, 0
	if batchID == "" {
		return nil
	}
	if t.batchID != "" && batchID != t.batchID {
		return &ContinuityError{URL: url, Reason: fmt.Sprintf("the key now names batch %s, not %s", batchID, t.batchID)}
	}
	t.batchID = batchID
	return nil
}

// feed classifies one complete line (without its newline) and records it.
// For lineError it returns the server's code and message as a *StreamError.
func (t *tracker) feed(line []byte) (lineKind, *wireLine, error) {
	var w wireLine
	if err := json.Unmarshal(line, &w); err != nil {
		return 0, nil, &ProtocolError{URL: t.url, Reason: fmt.Sprintf("line after seq %d is not JSON: %v", t.lastSeq, err)}
	}
	switch {
	// Aborted transactions carry an "error" too; only a line without a
	// seq is the stream's own error.
	case w.Seq == nil && w.Error != nil:
		return lineError, &w, &StreamError{URL: t.url, Lines: t.lastSeq, Code: w.Error.Code, Err: fmt.Errorf("%s", w.Error.Message)}
	case w.Done:
		return lineDone, &w, t.checkDone(&w)
	case w.Seq == nil:
		return 0, nil, &ProtocolError{URL: t.url, Reason: fmt.Sprintf("line after seq %d has neither seq, done nor error: %.200s", t.lastSeq, line)}
	}
	seq := *w.Seq
	if t.lastSeq != 0 && seq != t.lastSeq+1 {
		return 0, nil, &ProtocolError{URL: t.url, Reason: fmt.Sprintf("seq %d follows seq %d", seq, t.lastSeq)}
	}
	if seq < 1 || seq > t.delivered()+1 {
		return 0, nil, &ProtocolError{URL: t.url, Reason: fmt.Sprintf("seq %d when %d lines were received (a gap)", seq, t.delivered())}
	}
	t.lastSeq = seq
	sum := sha256.Sum256(line)
	if seq <= t.delivered() {
		if sum != t.digests[seq-1] {
			return 0, nil, &ContinuityError{URL: t.url, Seq: seq, Reason: fmt.Sprintf("replayed line differs from the one received before: %.200s", line)}
		}
		return lineReplayed, &w, nil
	}
	switch w.Status {
	case "committed":
		t.committed++
	case "aborted":
		t.aborted++
	default:
		return 0, nil, &ProtocolError{URL: t.url, Reason: fmt.Sprintf("seq %d has status %q", seq, w.Status)}
	}
	t.digests = append(t.digests, sum)
	return lineNew, &w, nil
}

func (t *tracker) checkDone(w *wireLine) error {
	switch {
	case w.Transactions != t.delivered() || t.lastSeq != t.delivered():
		return &ContinuityError{URL: t.url, Reason: fmt.Sprintf("summary says %d transactions; %d lines were received, %d on this stream", w.Transactions, t.delivered(), t.lastSeq)}
	case w.Committed != t.committed || w.Aborted != t.aborted:
		return &ContinuityError{URL: t.url, Reason: fmt.Sprintf("summary says %d committed, %d aborted; the lines say %d and %d", w.Committed, w.Aborted, t.committed, t.aborted)}
	case t.batchID != "" && w.BatchID != t.batchID:
		return &ContinuityError{URL: t.url, Reason: fmt.Sprintf("summary names batch %s, not %s", w.BatchID, t.batchID)}
	}
	t.batchID = w.BatchID
	return nil
}

// trimLine drops the newline (and a carriage return before it).
func trimLine(b []byte) []byte {
	b = bytes.TrimSuffix(b, []byte("\n"))
	return bytes.TrimSuffix(b, []byte("\r"))
}
