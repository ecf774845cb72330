package mtcp

import (
	"errors"
	"fmt"

	"hafe.dev/hafe/mtcp/internal/wire"
)

var errProtocol = errors.New("mtcp: protocol violation")

// sendStream holds the bytes the local application wrote that the peer has
// not acknowledged: offsets [base, end). sent is the next offset the current
// path transmits, and it never passes limit, the peer's credit. app is the
// application's own write offset, which trails end while a migrated server
// regenerates output the stream already holds.
//
// The buffer only ever advances its start and appends at its end, so a path
// writer may send a slice of it without holding the lock.
type sendStream struct {
	base    uint64
	buf     byteQueue
	heard   uint64 // the peer received up to here (≥ base once it said so)
	sent    uint64
	limit   uint64 // the peer's credit on the current path: DATA stays below it
	app     uint64
	fin     bool // the stream ends at end()
	appFin  bool // the application called CloseWrite
	finSent bool // FIN sent on the current path
}

func (s *sendStream) end() uint64  { return s.base + uint64(s.buf.len()) }
func (s *sendStream) unacked() int { return s.buf.len() }

// unheard is how many bytes are on their way: not yet reported received.
func (s *sendStream) unheard() int { return int(s.end() - max(s.base, s.heard)) }

// received notes the peer's report that it holds everything below off,
// which it may not let us discard yet.
func (s *sendStream) received(off uint64) error {
	if off > s.end() {
		return fmt.Errorf("%w: received %d beyond end %d", errProtocol, off, s.end())
	}
	s.heard = max(s.heard, off)
	return nil
}

// write appends p as the application writes it; bytes below end() are
// regenerated output the stream already holds and are dropped.
func (s *sendStream) write(p []byte) {
	if skip := s.end() - s.app; skip > 0 {
		k := min(uint64(len(p)), skip)
		p = p[k:]
		s.app += k
	}
	s.buf.push(p)
	s.app += uint64(len(p))
}

// ack discards everything below off. beyondOK allows off past end(): a
// migrated server's client may already hold output the application has
// not regenerated yet.
func (s *sendStream) ack(off uint64, beyondOK bool) error {
	if off > s.end() {
		if !beyondOK {
			return fmt.Errorf("%w: ack %d beyond end %d", errProtocol, off, s.end())
		}
		s.buf.drop(s.buf.len())
		s.base, s.sent = off, off
		return nil
	}
	if off <= s.base {
		return nil
	}
	s.buf.drop(int(off - s.base))
	s.base = off
	if s.sent < off {
		s.sent = off
	}
	return nil
}

// rewind makes the next path transmit from off.
func (s *sendStream) rewind(off uint64) error {
	if off < s.base || off > s.end() {
		return fmt.Errorf("%w: resume at %d outside [%d,%d]", errProtocol, off, s.base, s.end())
	}
	s.sent = off
	s.heard = off // what the new path's peer said it holds
	s.limit = off + wire.InitialCredit
	s.finSent = false
	return nil
}

// credit raises the limit the peer lets us send up to on this path.
func (s *sendStream) credit(off uint64) { s.limit = max(s.limit, off) }

// next returns up to n unsent bytes the peer's credit allows and marks them
// sent.
func (s *sendStream) next(n int) (uint64, []byte) {
	off := s.sent
	if off >= s.limit {
		return off, nil
	}
	n = int(min(uint64(n), s.limit-off))
	b := s.buf.slice(int(off-s.base), n)
	s.sent += uint64(len(b))
	return off, b
}

// needFin reports whether a FIN is due on the current path.
func (s *sendStream) needFin() bool { return s.fin && !s.finSent && s.sent == s.end() }

// recvStream holds bytes received from the peer: offsets [base, end). The
// application reads from read on. A client discards bytes as they are read;
// a server keeps them from the last snapshot on (the input log). limit is
// the credit the peer has on the current path: no DATA may reach past it,
// so the unread bytes stay bounded without ever pausing the path reader.
type recvStream struct {
	base    uint64
	buf     byteQueue
	read    uint64
	limit   uint64
	fin     bool
	finOff  uint64
	keepLog bool
}

func (r *recvStream) end() uint64 { return r.base + uint64(r.buf.len()) }
func (r *recvStream) unread() int { return int(r.end() - r.read) }
func (r *recvStream) logLen() int { return r.buf.len() }

// push adds bytes that start at off, ignoring any the stream already holds.
// It returns how many bytes were new. If p lies in a chunk (c non-nil), the
// new bytes are borrowed rather than copied.
func (r *recvStream) push(off uint64, p []byte, c *chunk) (int, error) {
	end := r.end()
	if off > end {
		return 0, fmt.Errorf("%w: data at %d leaves a gap after %d", errProtocol, off, end)
	}
	if dup := end - off; dup > 0 {
		if dup >= uint64(len(p)) {
			return 0, nil
		}
		p = p[dup:]
	}
	if end+uint64(len(p)) > r.limit {
		return 0, fmt.Errorf("%w: data to %d beyond credit %d", errProtocol, end+uint64(len(p)), r.limit)
	}
	if r.fin && end+uint64(len(p)) > r.finOff {
		return 0, fmt.Errorf("%w: data beyond FIN at %d", errProtocol, r.finOff)
	}
	if c != nil {
		r.buf.borrow(p, c)
	} else {
		r.buf.push(p)
	}
	return len(p), nil
}

// openPath starts a new path's credit: the peer resumes at end() and may
// send InitialCredit bytes before it hears a CREDIT.
func (r *recvStream) openPath() { r.limit = r.end() + wire.InitialCredit }

// grant returns a new credit to advertise when the application has read
// at least a quarter of the window since the last one, and records it as
// given. now always returns one: a new path's first CREDIT states the
// receiver's limit exactly, so the two ends never disagree about it
// (the receiver's implicit limit may be above the sender's).
func (r *recvStream) grant(window int, now bool) (uint64, bool) {
	want := r.read + uint64(window)
	if now {
		r.limit = max(r.limit, want)
		return r.limit, true
	}
	if want <= r.limit || want-r.limit < uint64(window/4) {
		return 0, false
	}
	r.limit = want
	return want, true
}

func (r *recvStream) setFin(off uint64) error {
	if off < r.end() || (r.fin && off != r.finOff) {
		return fmt.Errorf("%w: FIN at %d, stream at %d", errProtocol, off, r.end())
	}
	r.fin, r.finOff = true, off
	return nil
}

// readInto copies unread bytes to p.
func (r *recvStream) readInto(p []byte) int {
	n := r.buf.copyAt(int(r.read-r.base), p)
	r.read += uint64(n)
	if !r.keepLog {
		r.trim(r.read)
	}
	return n
}

func (r *recvStream) eof() bool { return r.fin && r.read == r.finOff }

// discard drops every unread byte, as if read.
func (r *recvStream) discard() {
	r.read = r.end()
	r.trim(r.read)
}

// trim drops the bytes below off (off ≤ read).
func (r *recvStream) trim(off uint64) {
	if off <= r.base {
		return
	}
	r.buf.drop(int(off - r.base))
	r.base = off
}
