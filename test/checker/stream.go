package checker

import (
	"bytes"
	"encoding/json"
	"hafe.dev/hafe/api"
)

// lineKind classifies one line of a response stream.
type lineKind uint8

const (
	slotLine      lineKind = iota + 1 // {"seq":N,"status":…}
	doneLine                          // {"done":true,…}
	errorLine                         // {"error":{…}}: the batch was interrupted
	malformedLine                     // anything else
)

// line is one complete line of a stream, without its newline.
type line struct {
	raw    []byte
	kind   lineKind
	seq    int
	status string
	done   summary
	why    string // for malformedLine
}

// summary is the done line's content.
type summary = api.Summary

// parsedStream is one captured response body.
type parsedStream struct {
	lines []line
	// tail is what followed the last newline: a line the stream was cut
	// off in the middle of (empty when the stream ended on a newline).
	tail []byte
}

func parseStream(raw []byte) parsedStream {
	var ps parsedStream
	for len(raw) > 0 {
		i := bytes.IndexByte(raw, '\n')
		if i < 0 {
			ps.tail = raw
			break
		}
		ps.lines = append(ps.lines, parseLine(raw[:i]))
		raw = raw[i+1:]
	}
	return ps
}

func parseLine(raw []byte) line {
	l := line{raw: raw}
	var v struct {
		Seq    *int            `json:"seq"`
		Status string          `json:"status"`
		Done   *bool           `json:"done"`
		Error  json.RawMessage `json:"error"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		l.kind, l.why = malformedLine, "not a JSON object: "+err.Error()
		return l
	}
	switch {
	case v.Done != nil:
		if !*v.Done || v.Seq != nil {
			l.kind, l.why = malformedLine, `a done line needs "done":true and no "seq"`
			return l
		}
		if err := json.Unmarshal(raw, &l.done); err != nil {
			l.kind, l.why = malformedLine, "done line: "+err.Error()
			return l
		}
		l.kind = doneLine
	case v.Seq != nil:
		if v.Status != "committed" && v.Status != "aborted" {
			l.kind, l.why = malformedLine, `a slot line needs "status" "committed" or "aborted"`
			return l
		}
		l.kind, l.seq, l.status = slotLine, *v.Seq, v.Status
	case v.Error != nil:
		l.kind = errorLine
	default:
		l.kind, l.why = malformedLine, `neither "seq", "done" nor "error"`
	}
	return l
}
