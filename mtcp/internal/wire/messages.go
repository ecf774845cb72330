package wire

import (
	"fmt"
	"slices"
)

// Version is the protocol version carried in HELLO. Version 2 added
// PREPARE, PUSH, PUSHED, DROP_PUSH and RECEIVED, and the Prepared flag of
// MIGRATE; version 3 the MAC of PREPARE over its target; version 4 credit
// flow control (CREDIT, InitialCredit), the names in PEER_HELLO that bind
// the peer proofs, and ConnState's HasState.
const Version = 4

// Hello opens a new connection.
type Hello struct{ Version uint8 }

func AppendHello(b []byte, m Hello) []byte {
	return frame(b, TypeHello, func(b []byte) []byte { return append(b, m.Version) })
}

func ParseHello(b []byte) (m Hello, err error) {
	p := parser{b: b}
	m.Version = p.u8()
	return m, p.done()
}

// Welcome answers HELLO: the connection's id and secret, the address peers
// know this server by, and the servers a client may migrate to.
type Welcome struct {
	ConnID  [16]byte
	Secret  []byte
	Self    string
	Servers []string
}

func AppendWelcome(b []byte, m Welcome) []byte {
	return frame(b, TypeWelcome, func(b []byte) []byte {
		b = append(b, m.ConnID[:]...)
		b = appendBytes8(b, m.Secret)
		b = appendString8(b, m.Self)
		return appendList(b, m.Servers)
	})
}

func ParseWelcome(b []byte) (m Welcome, err error) {
	p := parser{b: b}
	m.ConnID = p.id()
	m.Secret = p.bytes8(MaxSecret)
	m.Self = p.string8()
	m.Servers = parseList(&p)
	return m, p.done()
}

func appendList(b []byte, l []string) []byte {
	if len(l) > MaxServers {
		l = l[:MaxServers]
	}
	b = append(b, byte(len(l)))
	for _, s := range l {
		b = appendString8(b, s)
	}
	return b
}

func parseList(p *parser) []string {
	n := int(p.u8())
	if n > MaxServers {
		p.fail(fmt.Errorf("%w: %d servers", ErrTooLarge, n))
		return nil
	}
	var l []string
	for i := 0; i < n && p.err == nil; i++ {
		l = append(l, p.string8())
	}
	return l
}

// Migrate asks a server to take over a connection. MAC is computed by the
// client over ConnID, Counter, RecvOff and Origin with the connection's
// secret.
type Migrate struct {
	ConnID  [16]byte
	Counter uint64
	RecvOff uint64 // output bytes the client already holds
	Origin  string // the server the client was attached to
	MAC     []byte
	// Prepared says the client sent a PREPARE for this counter on its old
	// path, so the origin may push the state instead of waiting for a
	// FETCH. Carried only by the MIGRATE frame (not inside FETCH,
	// PREPARE or PUSH) and not covered by the MAC: it only tells the new
	// server to look for a push first.
	Prepared bool
}

func AppendMigrate(b []byte, m Migrate) []byte {
	return frame(b, TypeMigrate, func(b []byte) []byte {
		b = appendMigrateBody(b, m)
		return append(b, boolByte(m.Prepared))
	})
}

func appendMigrateBody(b []byte, m Migrate) []byte {
	b = append(b, m.ConnID[:]...)
	b = appendU64(b, m.Counter)
	b = appendU64(b, m.RecvOff)
	b = appendString8(b, m.Origin)
	return appendBytes8(b, m.MAC)
}

func migrateBodyLen(m Migrate) int {
	return len(m.ConnID) + 8 + 8 + 1 + len(m.Origin) + 1 + len(m.MAC)
}

func parseMigrateBody(p *parser) (m Migrate) {
	m.ConnID = p.id()
	m.Counter = p.u64()
	m.RecvOff = p.u64()
	m.Origin = p.string8()
	m.MAC = p.bytes8(MaxMAC)
	return m
}

func ParseMigrate(b []byte) (Migrate, error) {
	p := parser{b: b}
	m := parseMigrateBody(&p)
	m.Prepared = parseBool(&p)
	return m, p.done()
}

// Prepare, sent by the client on its current path just before it dials
// Target, asks the origin to freeze the connection and push its state to
// Target now, so the state is there (or on its way) when the MIGRATE
// arrives. Migrate is the very MIGRATE the client then sends.
// MAC, keyed with the connection's secret, covers Target and the
// MIGRATE's own MAC, so that no one on the path can send the push
// elsewhere.
type Prepare struct {
	Target  string
	Migrate Migrate
	MAC     []byte
}

func AppendPrepare(b []byte, m Prepare) []byte {
	return frame(b, TypePrepare, func(b []byte) []byte {
		b = appendString8(b, m.Target)
		b = appendMigrateBody(b, m.Migrate)
		return appendBytes8(b, m.MAC)
	})
}

func ParsePrepare(b []byte) (m Prepare, err error) {
	p := parser{b: b}
	m.Target = p.string8()
	m.Migrate = parseMigrateBody(&p)
	m.MAC = p.bytes8(MaxMAC)
	return m, p.done()
}

// Accepted ends a successful migration: the client resends input from RecvOff.
type Accepted struct {
	RecvOff uint64
	Self    string
	Servers []string
}

func AppendAccepted(b []byte, m Accepted) []byte {
	return frame(b, TypeAccepted, func(b []byte) []byte {
		b = appendU64(b, m.RecvOff)
		b = appendString8(b, m.Self)
		return appendList(b, m.Servers)
	})
}

func ParseAccepted(b []byte) (m Accepted, err error) {
	p := parser{b: b}
	m.RecvOff = p.u64()
	m.Self = p.string8()
	m.Servers = parseList(&p)
	return m, p.done()
}

// Refuse carries a refusal code (see mtcp.RefusalCode) and a short reason.
type Refuse struct {
	Code   uint8
	Reason string
}

func AppendRefuse(b []byte, m Refuse) []byte {
	return frame(b, TypeRefuse, func(b []byte) []byte {
		b = append(b, m.Code)
		return appendReason(b, m.Reason)
	})
}

// appendReason appends a refusal reason, cut to MaxReason bytes.
func appendReason(b []byte, r string) []byte {
	if len(r) > MaxReason {
		r = r[:MaxReason]
	}
	return appendString8(b, r)
}

func ParseRefuse(b []byte) (m Refuse, err error) {
	p := parser{b: b}
	m.Code = p.u8()
	m.Reason = string(p.bytes8(MaxReason))
	return m, p.done()
}

// AppendDataHeader appends the header and offset of a DATA frame whose n
// bytes the caller sends next (so they need not be copied).
func AppendDataHeader(b []byte, off uint64, n int) []byte {
	b = AppendHeader(b, TypeData, 8+n)
	return appendU64(b, off)
}

// AppendData appends a whole DATA frame.
func AppendData(b []byte, off uint64, data []byte) []byte {
	return append(AppendDataHeader(b, off, len(data)), data...)
}

// ParseData returns the offset of the first byte and the bytes (aliasing b).
func ParseData(b []byte) (off uint64, data []byte, err error) {
	if len(b) < 8 {
		return 0, nil, ErrShort
	}
	if len(b)-8 > MaxData {
		return 0, nil, ErrTooLarge
	}
	p := parser{b: b}
	off = p.u64()
	data = p.b
	if off+uint64(len(data)) < off {
		return 0, nil, fmt.Errorf("%w: offset overflow", ErrInvalid)
	}
	return off, data, nil
}

// Offset frames: ACK, FIN, PING and PONG carry one 64-bit number.
func AppendOffset(b []byte, t Type, v uint64) []byte {
	return frame(b, t, func(b []byte) []byte { return appendU64(b, v) })
}

func ParseOffset(b []byte) (uint64, error) {
	p := parser{b: b}
	v := p.u64()
	return v, p.done()
}

// AppendClose appends an empty CLOSE frame.
func AppendClose(b []byte) []byte { return AppendHeader(b, TypeClose, 0) }

// AppendMoved appends an empty MOVED frame.
func AppendMoved(b []byte) []byte { return AppendHeader(b, TypeMoved, 0) }

// Redirect hints the client to migrate to Addr.
type Redirect struct{ Addr string }

func AppendRedirect(b []byte, m Redirect) []byte {
	return frame(b, TypeRedirect, func(b []byte) []byte { return appendString8(b, m.Addr) })
}

func ParseRedirect(b []byte) (m Redirect, err error) {
	p := parser{b: b}
	m.Addr = p.string8()
	return m, p.done()
}

// Servers replaces the client's list of servers.
type Servers struct{ Addrs []string }

func AppendServers(b []byte, m Servers) []byte {
	return frame(b, TypeServers, func(b []byte) []byte { return appendList(b, m.Addrs) })
}

func ParseServers(b []byte) (m Servers, err error) {
	p := parser{b: b}
	m.Addrs = parseList(&p)
	return m, p.done()
}

// Standby marks a warm path for a connection; a MIGRATE follows later.
type Standby struct{ ConnID [16]byte }

func AppendStandby(b []byte, m Standby) []byte {
	return frame(b, TypeStandby, func(b []byte) []byte { return append(b, m.ConnID[:]...) })
}

func ParseStandby(b []byte) (m Standby, err error) {
	p := parser{b: b}
	m.ConnID = p.id()
	return m, p.done()
}

// PeerHello opens a peer channel: the connecting server's nonce, the name
// it goes by (From) and the name of the server it meant to reach (To, the
// address it dialled). Both sides' proofs cover both names.
type PeerHello struct {
	Nonce [32]byte
	From  string
	To    string
}

func AppendPeerHello(b []byte, m PeerHello) []byte {
	return frame(b, TypePeerHello, func(b []byte) []byte {
		b = append(b, m.Nonce[:]...)
		b = appendString8(b, m.From)
		return appendString8(b, m.To)
	})
}

func ParsePeerHello(b []byte) (m PeerHello, err error) {
	p := parser{b: b}
	copy(m.Nonce[:], p.take(32))
	m.From = p.string8()
	m.To = p.string8()
	return m, p.done()
}

// PeerChallenge is the accepting server's nonce and its proof of the key.
type PeerChallenge struct {
	Nonce [32]byte
	MAC   []byte
}

func AppendPeerChallenge(b []byte, m PeerChallenge) []byte {
	return frame(b, TypePeerChallenge, func(b []byte) []byte {
		b = append(b, m.Nonce[:]...)
		return appendBytes8(b, m.MAC)
	})
}

func ParsePeerChallenge(b []byte) (m PeerChallenge, err error) {
	p := parser{b: b}
	copy(m.Nonce[:], p.take(32))
	m.MAC = p.bytes8(MaxMAC)
	return m, p.done()
}

// PeerAuth is the connecting server's proof of the key.
type PeerAuth struct{ MAC []byte }

func AppendPeerAuth(b []byte, m PeerAuth) []byte {
	return frame(b, TypePeerAuth, func(b []byte) []byte { return appendBytes8(b, m.MAC) })
}

func ParsePeerAuth(b []byte) (m PeerAuth, err error) {
	p := parser{b: b}
	m.MAC = p.bytes8(MaxMAC)
	return m, p.done()
}

// Fetch forwards a client's MIGRATE to the origin server.
type Fetch struct {
	Req     uint64
	Migrate Migrate
}

func AppendFetch(b []byte, m Fetch) []byte {
	return frame(b, TypeFetch, func(b []byte) []byte {
		b = appendU64(b, m.Req)
		return appendMigrateBody(b, m.Migrate)
	})
}

func ParseFetch(b []byte) (m Fetch, err error) {
	p := parser{b: b}
	m.Req = p.u64()
	m.Migrate = parseMigrateBody(&p)
	return m, p.done()
}

// ConnState is a connection's transferable state: what a new server needs to
// reinstate it. Input is the input log from SnapIn on; Output holds the
// output bytes from OutOff on that the client may not have yet. HasState
// says the application exported a snapshot, State (which may be empty);
// without one the new server's application starts afresh.
type ConnState struct {
	ConnID   [16]byte
	Secret   []byte
	Counter  uint64
	Seq      uint64
	SnapIn   uint64
	SnapOut  uint64
	HasState bool
	State    []byte
	Input    []byte
	InFin    bool
	OutOff   uint64
	Output   []byte
	OutFin   bool
}

// Transfer answers a Fetch: Code 0 and the state, or a refusal code.
type Transfer struct {
	Req    uint64
	Code   uint8
	Reason string
	State  ConnState
}

func AppendTransfer(b []byte, m Transfer) []byte {
	b = slices.Grow(b, HeaderLen+8+1+1+len(m.Reason)+connStateLen(m.State))
	return frame(b, TypeTransfer, func(b []byte) []byte {
		b = appendU64(b, m.Req)
		b = append(b, m.Code)
		b = appendReason(b, m.Reason)
		if m.Code != 0 {
			return b
		}
		return AppendConnState(b, m.State)
	})
}

// AppendConnState encodes s without a frame header (also used by snapshot
// stores that want one opaque blob).
func AppendConnState(b []byte, s ConnState) []byte {
	b = slices.Grow(b, connStateLen(s)) // one allocation, not one per doubling
	b = append(b, s.ConnID[:]...)
	b = appendBytes8(b, s.Secret)
	b = appendU64(b, s.Counter)
	b = appendU64(b, s.Seq)
	b = appendU64(b, s.SnapIn)
	b = appendU64(b, s.SnapOut)
	b = append(b, boolByte(s.HasState))
	b = appendBytes32(b, s.State)
	b = appendBytes32(b, s.Input)
	b = append(b, boolByte(s.InFin))
	b = appendU64(b, s.OutOff)
	b = appendBytes32(b, s.Output)
	return append(b, boolByte(s.OutFin))
}

// connStateLen is the encoded size of s.
func connStateLen(s ConnState) int {
	return len(s.ConnID) + 1 + len(s.Secret) + 4*8 + 1 + 4 + len(s.State) + 4 + len(s.Input) + 1 + 8 + 4 + len(s.Output) + 1
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

func parseBool(p *parser) bool {
	switch p.u8() {
	case 0:
		return false
	case 1:
		return true
	}
	p.fail(fmt.Errorf("%w: bool", ErrInvalid))
	return false
}

func parseConnState(p *parser) (s ConnState) {
	s.ConnID = p.id()
	s.Secret = p.bytes8(MaxSecret)
	s.Counter = p.u64()
	s.Seq = p.u64()
	s.SnapIn = p.u64()
	s.SnapOut = p.u64()
	s.HasState = parseBool(p)
	s.State = p.bytes32(MaxPayload)
	s.Input = p.bytes32(MaxPayload)
	s.InFin = parseBool(p)
	s.OutOff = p.u64()
	s.Output = p.bytes32(MaxPayload)
	s.OutFin = parseBool(p)
	if p.err == nil && (s.SnapIn+uint64(len(s.Input)) < s.SnapIn || s.OutOff+uint64(len(s.Output)) < s.OutOff) {
		p.fail(fmt.Errorf("%w: offset overflow", ErrInvalid))
	}
	return s
}

// ParseConnState decodes what AppendConnState encoded.
func ParseConnState(b []byte) (ConnState, error) {
	p := parser{b: b}
	s := parseConnState(&p)
	return s, p.done()
}

// Push hands a prepared connection's state to the server its client is
// dialling, ahead of the MIGRATE (which must match Migrate exactly).
type Push struct {
	Req     uint64
	Migrate Migrate
	State   ConnState
}

func AppendPush(b []byte, m Push) []byte {
	b = slices.Grow(b, HeaderLen+8+migrateBodyLen(m.Migrate)+connStateLen(m.State))
	return frame(b, TypePush, func(b []byte) []byte {
		b = appendU64(b, m.Req)
		b = appendMigrateBody(b, m.Migrate)
		return AppendConnState(b, m.State)
	})
}

func ParsePush(b []byte) (m Push, err error) {
	p := parser{b: b}
	m.Req = p.u64()
	m.Migrate = parseMigrateBody(&p)
	m.State = parseConnState(&p)
	return m, p.done()
}

// Pushed answers a Push or a DropPush. For a Push, Code 0 means the new
// server holds the state for the MIGRATE; otherwise it refused (the origin
// then still owns the handover and answers a FETCH for the same MIGRATE
// with the state). Like Transfer it starts with the request number, as
// every answer on the peer channel does.
type Pushed struct {
	Req    uint64
	Code   uint8
	Reason string
}

func AppendPushed(b []byte, m Pushed) []byte {
	return frame(b, TypePushed, func(b []byte) []byte {
		b = appendU64(b, m.Req)
		b = append(b, m.Code)
		return appendReason(b, m.Reason)
	})
}

func ParsePushed(b []byte) (m Pushed, err error) {
	p := parser{b: b}
	m.Req = p.u64()
	m.Code = p.u8()
	m.Reason = string(p.bytes8(MaxReason))
	return m, p.done()
}

// DropPush withdraws a push: the new server forgets the state pushed for
// ConnID at Counter or below.
type DropPush struct {
	Req     uint64
	ConnID  [16]byte
	Counter uint64
}

func AppendDropPush(b []byte, m DropPush) []byte {
	return frame(b, TypeDropPush, func(b []byte) []byte {
		b = appendU64(b, m.Req)
		b = append(b, m.ConnID[:]...)
		return appendU64(b, m.Counter)
	})
}

func ParseDropPush(b []byte) (m DropPush, err error) {
	p := parser{b: b}
	m.Req = p.u64()
	m.ConnID = p.id()
	m.Counter = p.u64()
	return m, p.done()
}

func ParseTransfer(b []byte) (m Transfer, err error) {
	p := parser{b: b}
	m.Req = p.u64()
	m.Code = p.u8()
	m.Reason = string(p.bytes8(MaxReason))
	if m.Code == 0 {
		m.State = parseConnState(&p)
	}
	return m, p.done()
}
