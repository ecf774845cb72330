package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Type names a frame.
type Type uint8

// Frame types. Client↔server path frames first, then peer-channel frames.
const (
	TypeHello    Type = 1  // client → server: open a new connection
	TypeWelcome  Type = 2  // server → client: id, secret, servers
	TypeMigrate  Type = 3  // client → server: move this connection here
	TypeAccepted Type = 4  // server → client: migration accepted, resend input from offset
	TypeRefuse   Type = 5  // either direction: refusal code and reason
	TypeData     Type = 6  // stream bytes at an offset
	TypeAck      Type = 7  // cumulative offset the receiver holds (or may discard up to)
	TypeFin      Type = 8  // end of stream at an offset (half-close)
	TypeClose    Type = 9  // connection closed for good
	TypePing     Type = 10 // keepalive request
	TypePong     Type = 11 // keepalive answer
	TypeRedirect Type = 12 // server → client: please migrate to this address
	TypeServers  Type = 13 // server → client: current server list
	TypeStandby  Type = 14 // client → server: warm path, a MIGRATE will follow
	TypeMoved    Type = 15 // client → old server on the old path: the connection migrated
	TypePrepare  Type = 16 // client → origin on the old path: push my state to this server
	TypeReceived Type = 17 // offset the receiver holds but may not let the sender discard yet (eager)
	TypeCredit   Type = 18 // receiver → sender: DATA may go up to this offset on this path

	TypePeerHello     Type = 32 // peer → peer: client nonce
	TypePeerChallenge Type = 33 // server nonce + server proof
	TypePeerAuth      Type = 34 // client proof
	TypeFetch         Type = 35 // new server → origin: freeze and hand over
	TypeTransfer      Type = 36 // origin → new server: state or refusal
	TypePush          Type = 37 // origin → new server: state for a prepared MIGRATE
	TypePushed        Type = 38 // new server → origin: push kept, or refused (also answers DROP_PUSH)
	TypeDropPush      Type = 39 // origin → new server: forget a pushed state, the counter moved on
)

var typeNames = map[Type]string{
	TypeHello: "HELLO", TypeWelcome: "WELCOME", TypeMigrate: "MIGRATE", TypeAccepted: "ACCEPTED",
	TypeRefuse: "REFUSE", TypeData: "DATA", TypeAck: "ACK", TypeFin: "FIN", TypeClose: "CLOSE",
	TypePing: "PING", TypePong: "PONG", TypeRedirect: "REDIRECT", TypeServers: "SERVERS",
	TypeStandby: "STANDBY", TypeMoved: "MOVED", TypePeerHello: "PEER_HELLO", TypePeerChallenge: "PEER_CHALLENGE",
	TypePeerAuth: "PEER_AUTH", TypeFetch: "FETCH", TypeTransfer: "TRANSFER",
	TypePrepare: "PREPARE", TypeReceived: "RECEIVED", TypeCredit: "CREDIT", TypePush: "PUSH", TypePushed: "PUSHED", TypeDropPush: "DROP_PUSH",
}

func (t Type) String() string {
	if s, ok := typeNames[t]; ok {
		return s
	}
	return fmt.Sprintf("Type(%d)", uint8(t))
}

// HeaderLen is the size of a frame header.
const HeaderLen = 5

// InitialCredit is how far past the offset a path resumes at a sender may
// send DATA before the receiver's first CREDIT on that path arrives. Every
// receiver buffers at least this much; CREDIT frames then move the limit.
const InitialCredit = 64 << 10

// Size bounds. MaxData bounds one DATA frame's bytes; MaxPayload bounds any
// frame (a TRANSFER carries state, input log and unacknowledged output).
const (
	MaxData    = 64 << 10
	MaxPayload = 16 << 20
	MaxAddr    = 255
	MaxServers = 64
	MaxSecret  = 64
	MaxMAC     = 64
	MaxReason  = 255
)

// MaxPayloadFor is the largest payload a frame of type t may carry.
func MaxPayloadFor(t Type) int {
	switch t {
	case TypeData:
		return 8 + MaxData
	case TypeTransfer, TypePush:
		return MaxPayload
	case TypeWelcome, TypeAccepted, TypeServers:
		return 16 + 1 + MaxSecret + 8 + 2 + MaxAddr + 2 + MaxServers*(1+MaxAddr)
	default:
		return 1024
	}
}

// Errors returned by parsers.
var (
	ErrShort    = errors.New("wire: truncated frame")
	ErrTooLarge = errors.New("wire: frame too large")
	ErrTrailing = errors.New("wire: trailing bytes in frame")
	ErrInvalid  = errors.New("wire: invalid field")
)

// AppendHeader appends a frame header for a payload of n bytes.
func AppendHeader(b []byte, t Type, n int) []byte {
	b = append(b, byte(t))
	return binary.BigEndian.AppendUint32(b, uint32(n))
}

// ParseHeader decodes a frame header and checks the length against the bound
// for its type.
func ParseHeader(b []byte) (Type, int, error) {
	if len(b) < HeaderLen {
		return 0, 0, ErrShort
	}
	t := Type(b[0])
	n := binary.BigEndian.Uint32(b[1:5])
	if int64(n) > int64(MaxPayloadFor(t)) {
		return t, 0, fmt.Errorf("%w: %s of %d bytes", ErrTooLarge, t, n)
	}
	return t, int(n), nil
}

// ReadFrame reads one frame. The payload is read into buf when it fits
// (pass a reusable buffer) and must not be retained past the next call.
func ReadFrame(r io.Reader, hdr *[HeaderLen]byte, buf []byte) (Type, []byte, error) {
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	t, n, err := ParseHeader(hdr[:])
	if err != nil {
		return t, nil, err
	}
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return t, nil, err
	}
	return t, buf, nil
}

// frame appends a header with a placeholder length, runs body, then patches
// the length in.
func frame(b []byte, t Type, body func([]byte) []byte) []byte {
	start := len(b)
	b = AppendHeader(b, t, 0)
	b = body(b)
	binary.BigEndian.PutUint32(b[start+1:start+5], uint32(len(b)-start-HeaderLen))
	return b
}

func appendU64(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }

func appendBytes8(b, v []byte) []byte { // length ≤ 255
	b = append(b, byte(len(v)))
	return append(b, v...)
}

func appendBytes32(b, v []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
	return append(b, v...)
}

func appendString8(b []byte, s string) []byte {
	b = append(b, byte(len(s)))
	return append(b, s...)
}

// parser reads fields off a payload, remembering the first error.
type parser struct {
	b   []byte
	err error
}

func (p *parser) fail(err error) {
	if p.err == nil {
		p.err = err
	}
	p.b = nil
}

func (p *parser) take(n int) []byte {
	if p.err != nil {
		return nil
	}
	if n < 0 || len(p.b) < n {
		p.fail(ErrShort)
		return nil
	}
	v := p.b[:n:n]
	p.b = p.b[n:]
	return v
}

func (p *parser) u8() uint8 {
	v := p.take(1)
	if v == nil {
		return 0
	}
	return v[0]
}

func (p *parser) u64() uint64 {
	v := p.take(8)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func (p *parser) u32() uint32 {
	v := p.take(4)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint32(v)
}

func (p *parser) bytes8(max int) []byte {
	n := int(p.u8())
	if n > max {
		p.fail(fmt.Errorf("%w: %d-byte field over %d", ErrTooLarge, n, max))
		return nil
	}
	return p.take(n)
}

func (p *parser) bytes32(max int) []byte {
	n := p.u32()
	if int64(n) > int64(max) {
		p.fail(fmt.Errorf("%w: %d-byte field over %d", ErrTooLarge, n, max))
		return nil
	}
	return p.take(int(n))
}

func (p *parser) string8() string { return string(p.bytes8(MaxAddr)) }

func (p *parser) id() (id [16]byte) {
	copy(id[:], p.take(16))
	return id
}

func (p *parser) done() error {
	if p.err == nil && len(p.b) != 0 {
		p.err = ErrTrailing
	}
	return p.err
}
