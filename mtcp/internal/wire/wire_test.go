package wire

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

// parseAny decodes a whole frame (header and payload) into its message value
// and re-encodes it; it is the round-trip both the tests and the fuzzer use.
func parseAny(frameBytes []byte) (any, []byte, error) {
	t, n, err := ParseHeader(frameBytes)
	if err != nil {
		return nil, nil, err
	}
	if len(frameBytes) != HeaderLen+n {
		return nil, nil, ErrShort
	}
	b := frameBytes[HeaderLen:]
	var (
		m   any
		enc []byte
	)
	switch t {
	case TypeHello:
		v, e := ParseHello(b)
		m, err, enc = v, e, AppendHello(nil, v)
	case TypeWelcome:
		v, e := ParseWelcome(b)
		m, err, enc = v, e, AppendWelcome(nil, v)
	case TypeMigrate:
		v, e := ParseMigrate(b)
		m, err, enc = v, e, AppendMigrate(nil, v)
	case TypeAccepted:
		v, e := ParseAccepted(b)
		m, err, enc = v, e, AppendAccepted(nil, v)
	case TypeRefuse:
		v, e := ParseRefuse(b)
		m, err, enc = v, e, AppendRefuse(nil, v)
	case TypeData:
		off, d, e := ParseData(b)
		m, err, enc = [2]any{off, string(d)}, e, AppendData(nil, off, d)
	case TypeAck, TypeFin, TypePing, TypePong, TypeReceived, TypeCredit:
		v, e := ParseOffset(b)
		m, err, enc = v, e, AppendOffset(nil, t, v)
	case TypeClose, TypeMoved:
		if n != 0 {
			return nil, nil, ErrTrailing
		}
		m, enc = struct{}{}, AppendHeader(nil, t, 0)
	case TypeRedirect:
		v, e := ParseRedirect(b)
		m, err, enc = v, e, AppendRedirect(nil, v)
	case TypeServers:
		v, e := ParseServers(b)
		m, err, enc = v, e, AppendServers(nil, v)
	case TypeStandby:
		v, e := ParseStandby(b)
		m, err, enc = v, e, AppendStandby(nil, v)
	case TypePeerHello:
		v, e := ParsePeerHello(b)
		m, err, enc = v, e, AppendPeerHello(nil, v)
	case TypePeerChallenge:
		v, e := ParsePeerChallenge(b)
		m, err, enc = v, e, AppendPeerChallenge(nil, v)
	case TypePeerAuth:
		v, e := ParsePeerAuth(b)
		m, err, enc = v, e, AppendPeerAuth(nil, v)
	case TypeFetch:
		v, e := ParseFetch(b)
		m, err, enc = v, e, AppendFetch(nil, v)
	case TypeTransfer:
		v, e := ParseTransfer(b)
		m, err, enc = v, e, AppendTransfer(nil, v)
	case TypePrepare:
		v, e := ParsePrepare(b)
		m, err, enc = v, e, AppendPrepare(nil, v)
	case TypePush:
		v, e := ParsePush(b)
		m, err, enc = v, e, AppendPush(nil, v)
	case TypePushed:
		v, e := ParsePushed(b)
		m, err, enc = v, e, AppendPushed(nil, v)
	case TypeDropPush:
		v, e := ParseDropPush(b)
		m, err, enc = v, e, AppendDropPush(nil, v)
	default:
		return nil, nil, ErrInvalid
	}
	return m, enc, err
}

func sampleFrames() [][]byte {
	id := [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	mig := Migrate{ConnID: id, Counter: 7, RecvOff: 1 << 40, Origin: "10.0.0.1:5432", MAC: bytes.Repeat([]byte{9}, 32)}
	var fs [][]byte
	add := func(b []byte) { fs = append(fs, b) }
	add(AppendHello(nil, Hello{Version: Version}))
	add(AppendWelcome(nil, Welcome{ConnID: id, Secret: []byte("0123456789abcdef0123456789abcdef"), Self: "a:1", Servers: []string{"a:1", "b:2"}}))
	add(AppendMigrate(nil, mig))
	prepared := mig
	prepared.Prepared = true
	add(AppendMigrate(nil, prepared))
	add(AppendAccepted(nil, Accepted{RecvOff: 99, Self: "b:2", Servers: []string{"a:1"}}))
	add(AppendRefuse(nil, Refuse{Code: 3, Reason: "replayed counter"}))
	add(AppendData(nil, 1<<33, []byte("hello")))
	add(AppendData(nil, 0, nil))
	add(AppendOffset(nil, TypeAck, 12345))
	add(AppendOffset(nil, TypeFin, 1))
	add(AppendOffset(nil, TypePing, 2))
	add(AppendOffset(nil, TypePong, 3))
	add(AppendOffset(nil, TypeReceived, 4))
	add(AppendOffset(nil, TypeCredit, 5))
	add(AppendClose(nil))
	add(AppendMoved(nil))
	add(AppendRedirect(nil, Redirect{Addr: "c:3"}))
	add(AppendServers(nil, Servers{Addrs: []string{"a:1", "b:2", "c:3"}}))
	add(AppendStandby(nil, Standby{ConnID: id}))
	add(AppendPeerHello(nil, PeerHello{Nonce: [32]byte{1}, From: "a:1", To: "b:2"}))
	add(AppendPeerChallenge(nil, PeerChallenge{Nonce: [32]byte{2}, MAC: []byte{1, 2, 3}}))
	add(AppendPeerAuth(nil, PeerAuth{MAC: []byte{4, 5}}))
	add(AppendFetch(nil, Fetch{Req: 5, Migrate: mig}))
	add(AppendTransfer(nil, Transfer{Req: 5, Code: 4, Reason: "state unavailable"}))
	add(AppendTransfer(nil, Transfer{Req: 6, State: ConnState{
		ConnID: id, Secret: []byte("s"), Counter: 3, Seq: 9, SnapIn: 100, SnapOut: 200,
		HasState: true, State: []byte("state"), Input: []byte("log"), InFin: true, OutOff: 150, Output: []byte("out"), OutFin: true,
	}}))
	add(AppendPrepare(nil, Prepare{Target: "b:2", Migrate: mig, MAC: []byte{9, 8, 7}}))
	add(AppendPush(nil, Push{Req: 7, Migrate: mig, State: ConnState{
		ConnID: id, Secret: []byte("s"), Counter: 3, SnapIn: 10, SnapOut: 20, State: []byte("st"), OutOff: 15, Output: []byte("o"),
	}}))
	add(AppendPushed(nil, Pushed{Req: 7}))
	add(AppendPushed(nil, Pushed{Req: 8, Code: 4, Reason: "too many pushed states"}))
	add(AppendDropPush(nil, DropPush{Req: 9, ConnID: id, Counter: 7}))
	return fs
}

func TestFramesRoundTrip(t *testing.T) {
	for _, f := range sampleFrames() {
		m, enc, err := parseAny(f)
		if err != nil {
			t.Fatalf("%s: parse: %v", Type(f[0]), err)
		}
		if !bytes.Equal(enc, f) {
			t.Fatalf("%s: re-encoding differs:\n%x\n%x", Type(f[0]), enc, f)
		}
		m2, _, err := parseAny(enc)
		if err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("%s: second parse %v: %#v != %#v", Type(f[0]), err, m, m2)
		}
	}
}

func TestParseRefusesTruncatedFrames(t *testing.T) {
	for _, f := range sampleFrames() {
		p := f[HeaderLen:]
		for i := 0; i < len(p); i++ {
			trunc := append(AppendHeader(nil, Type(f[0]), i), p[:i]...)
			if Type(f[0]) == TypeData && i >= 8 {
				continue // any data length is a valid DATA frame
			}
			if _, _, err := parseAny(trunc); err == nil {
				t.Fatalf("%s truncated to %d bytes parsed without error", Type(f[0]), i)
			}
		}
	}
}

func TestParseHeaderBoundsPayload(t *testing.T) {
	for _, typ := range []Type{TypeData, TypeHello, TypeTransfer, TypeWelcome} {
		h := AppendHeader(nil, typ, MaxPayloadFor(typ)+1)
		if _, _, err := ParseHeader(h); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("%s: want ErrTooLarge, got %v", typ, err)
		}
		h = AppendHeader(nil, typ, MaxPayloadFor(typ))
		if _, _, err := ParseHeader(h); err != nil {
			t.Fatalf("%s: max size refused: %v", typ, err)
		}
	}
}

func TestReadFrameReusesBuffer(t *testing.T) {
	var stream []byte
	for _, f := range sampleFrames() {
		stream = append(stream, f...)
	}
	r := bytes.NewReader(stream)
	var hdr [HeaderLen]byte
	buf := make([]byte, 0, 1024)
	for i, f := range sampleFrames() {
		typ, p, err := ReadFrame(r, &hdr, buf)
		if err != nil || typ != Type(f[0]) || !bytes.Equal(p, f[HeaderLen:]) {
			t.Fatalf("frame %d: %v %v", i, typ, err)
		}
	}
}

func FuzzParseFrame(f *testing.F) {
	for _, fr := range sampleFrames() {
		f.Add(fr)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, enc, err := parseAny(b)
		if err != nil {
			return
		}
		// A frame that parses re-encodes to the same bytes (one encoding per
		// message), and parses again to the same value.
		if !bytes.Equal(enc, b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", enc, b)
		}
		m2, _, err := parseAny(enc)
		if err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("second parse: %v", err)
		}
	})
}

func FuzzParseConnState(f *testing.F) {
	f.Add(AppendConnState(nil, ConnState{Secret: []byte("k"), State: []byte("s"), Input: []byte("i"), Output: []byte("o")}))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseConnState(b)
		if err != nil {
			return
		}
		if enc := AppendConnState(nil, s); !bytes.Equal(enc, b) {
			t.Fatalf("re-encoding differs")
		}
	})
}

// The encoders of the state-carrying frames size their buffer once.
func TestStateFramesAllocateOnce(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates on its own")
	}
	st := ConnState{Secret: make([]byte, 32), State: make([]byte, 10<<10), Input: make([]byte, 300), Output: make([]byte, 700)}
	m := Migrate{Counter: 3, Origin: "10.0.0.1:7000", MAC: make([]byte, 32)}
	for name, enc := range map[string]func() []byte{
		"TRANSFER": func() []byte { return AppendTransfer(nil, Transfer{Req: 1, State: st}) },
		"PUSH":     func() []byte { return AppendPush(nil, Push{Req: 1, Migrate: m, State: st}) },
	} {
		if n := testing.AllocsPerRun(20, func() { _ = enc() }); n != 1 {
			t.Errorf("%s: %v allocations, want 1", name, n)
		}
	}
}
