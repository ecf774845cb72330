package mtcp

import (
	"bytes"
	"errors"
	"testing"

	"hafe.dev/hafe/mtcp/internal/wire"
)

func TestRecvStreamDropsDuplicatesAndRefusesGaps(t *testing.T) {
	var r recvStream
	r.openPath()
	for _, tt := range []struct {
		off     uint64
		data    string
		wantNew int
		wantErr bool
	}{
		{0, "hello", 5, false},
		{0, "hel", 0, false},      // all old
		{3, "lo world", 6, false}, // overlap: only " world" is new
		{20, "x", 0, true},        // gap
		{11, "", 0, false},        // empty at the end
		{11, "!", 1, false},       // exactly at the end
		{5, " wor", 0, false},     // old
	} {
		n, err := r.push(tt.off, []byte(tt.data), nil)
		if n != tt.wantNew || (err != nil) != tt.wantErr {
			t.Fatalf("push(%d, %q) = %d, %v", tt.off, tt.data, n, err)
		}
		if err != nil && !errors.Is(err, errProtocol) {
			t.Fatalf("gap error %v is not a protocol violation", err)
		}
	}
	buf := make([]byte, 64)
	n := r.readInto(buf)
	if string(buf[:n]) != "hello world!" {
		t.Fatalf("read %q", buf[:n])
	}
	if err := r.setFin(5); err == nil {
		t.Fatal("FIN below the end accepted")
	}
	if err := r.setFin(12); err != nil || !r.eof() {
		t.Fatalf("FIN at end: %v, eof %v", err, r.eof())
	}
	if _, err := r.push(12, []byte("late"), nil); err == nil {
		t.Fatal("data beyond FIN accepted")
	}
}

// A migrated server's application regenerates output from its snapshot;
// bytes the stream already holds are dropped, the rest appended.
func TestSendStreamDropsRegeneratedOutput(t *testing.T) {
	// The client holds output up to 10; the origin sent up to 14 ("KLMN"
	// transferred); the snapshot was at 6.
	s := sendStream{base: 10, buf: queueOf([]byte("KLMN")), sent: 10, app: 6, limit: 10 + wire.InitialCredit}
	s.write([]byte("ghij")) // offsets 6..9: client has them
	s.write([]byte("KL"))   // 10..11: already held
	s.write([]byte("MNOP")) // 12..15: "OP" is new
	if s.app != 16 || s.end() != 16 {
		t.Fatalf("app %d end %d", s.app, s.end())
	}
	if got := s.buf.bytesFrom(0, s.buf.len()); !bytes.Equal(got, []byte("KLMNOP")) {
		t.Fatalf("stream holds %q", got)
	}
	off, b := s.next(4)
	if off != 10 || string(b) != "KLMN" {
		t.Fatalf("next = %d %q", off, b)
	}
	if err := s.ack(12, false); err != nil || s.base != 12 {
		t.Fatalf("ack: %v base %d", err, s.base)
	}
	if err := s.rewind(11); err == nil {
		t.Fatal("rewind below the acknowledged offset accepted")
	}
	if err := s.ack(99, false); err == nil {
		t.Fatal("ack beyond the end accepted on a client")
	}
	// A server accepts it: the client already holds output the application
	// has not regenerated yet.
	if err := s.ack(20, true); err != nil || s.base != 20 || s.end() != 20 {
		t.Fatalf("server ack beyond end: %v base %d end %d", err, s.base, s.end())
	}
	s.write([]byte("QRST")) // 16..19: held by the client
	s.write([]byte("UV"))   // 20..21: new
	if s.end() != 22 || string(s.buf.bytesFrom(0, s.buf.len())) != "UV" {
		t.Fatalf("after catching up: end %d", s.end())
	}
}

// Credit bounds both ends: the sender sends no byte past the peer's
// credit, and the receiver refuses DATA that reaches past the credit it
// gave, whatever the sender does.
func TestCreditBoundsSenderAndReceiver(t *testing.T) {
	var s sendStream
	if err := s.rewind(0); err != nil {
		t.Fatal(err)
	}
	s.write(make([]byte, wire.InitialCredit+100))
	if _, b := s.next(wire.InitialCredit + 100); len(b) != wire.InitialCredit {
		t.Fatalf("sent %d bytes on a fresh path, want the initial credit %d", len(b), wire.InitialCredit)
	}
	if off, b := s.next(10); len(b) != 0 || off != wire.InitialCredit {
		t.Fatalf("sent %d bytes at %d past the credit", len(b), off)
	}
	s.credit(wire.InitialCredit + 40)
	s.credit(5) // credit never shrinks
	if _, b := s.next(100); len(b) != 40 {
		t.Fatalf("sent %d bytes after a credit of 40 more", len(b))
	}

	var r recvStream
	r.openPath()
	if _, err := r.push(0, make([]byte, wire.InitialCredit), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := r.push(wire.InitialCredit, []byte("x"), nil); !errors.Is(err, errProtocol) {
		t.Fatalf("data past the credit: %v, want a protocol violation", err)
	}
	const window = 256 << 10
	if _, ok := r.grant(window, false); !ok {
		t.Fatal("no credit granted while the whole window is free")
	}
	if _, ok := r.grant(window, false); ok {
		t.Fatal("credit granted again with nothing read")
	}
	buf := make([]byte, window/8)
	r.readInto(buf)
	if _, ok := r.grant(window, false); ok {
		t.Fatal("credit granted for an eighth of the window")
	}
	r.readInto(buf)
	if off, ok := r.grant(window, false); !ok || off != r.read+window {
		t.Fatalf("grant after a quarter of the window = %d, %v", off, ok)
	}
	if _, err := r.push(r.end(), make([]byte, int(r.limit-r.end())), nil); err != nil {
		t.Fatalf("data up to the granted credit: %v", err)
	}
}

func TestCheckMigrate(t *testing.T) {
	secret := randomSecret()
	m := wire.Migrate{ConnID: randomID(), Counter: 5, RecvOff: 100, Origin: "a:1"}
	m.MAC = migrateMAC(secret, m)
	for _, tt := range []struct {
		name string
		mod  func(*wire.Migrate)
		last uint64
		want RefusalCode
	}{
		{"valid", func(*wire.Migrate) {}, 4, 0},
		{"replayed", func(*wire.Migrate) {}, 5, RefuseReplayedCounter},
		{"older", func(*wire.Migrate) {}, 9, RefuseReplayedCounter},
		{"counter changed", func(m *wire.Migrate) { m.Counter = 6 }, 4, RefuseBadMAC},
		{"offset changed", func(m *wire.Migrate) { m.RecvOff = 0 }, 4, RefuseBadMAC},
		{"origin changed", func(m *wire.Migrate) { m.Origin = "evil:1" }, 4, RefuseBadMAC},
		{"no MAC", func(m *wire.Migrate) { m.MAC = nil }, 4, RefuseBadMAC},
	} {
		mm := m
		mm.MAC = append([]byte(nil), m.MAC...)
		tt.mod(&mm)
		if got := checkMigrate(secret, tt.last, mm); got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}
