package mtcp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"testing"

	"hafe.dev/hafe/mtcp/internal/wire"
)

// The machine is tested without goroutines, sockets or timers: each test
// feeds it events and checks the frames it queues and the effects it asks
// for.

func newServerMachine(lim Limits) *machine {
	m := newMachine(ConnID{1}, &serverProto{maxInputLog: 8 << 20}, lim, slog.New(slog.DiscardHandler))
	return &m
}

func newClientMachine(lim Limits) *machine {
	m := newMachine(ConnID{1}, &clientProto{cur: "a:1"}, lim, slog.New(slog.DiscardHandler))
	return &m
}

// frameLine renders a frame the way the tests expect it.
func frameLine(t wire.Type, payload []byte) string {
	switch t {
	case wire.TypeData:
		off, d, _ := wire.ParseData(payload)
		return fmt.Sprintf("DATA %d+%d", off, len(d))
	case wire.TypeAck, wire.TypeFin, wire.TypeReceived, wire.TypeCredit, wire.TypePing, wire.TypePong:
		v, _ := wire.ParseOffset(payload)
		return fmt.Sprintf("%s %d", t, v)
	}
	return t.String()
}

// drain polls the machine as its path writer would and returns the frames
// it would send, one line each, and whether it would then say CLOSE.
func drain(t *testing.T, m *machine) (lines []string, closing bool) {
	t.Helper()
	var raw []byte
	for range 1000 {
		b, _ := m.poll(nil, maxBatch)
		for _, buf := range b.bufs {
			raw = append(raw, buf...)
		}
		m.sent(b.data)
		if b.close {
			closing = true
			break
		}
		if len(b.bufs) == 0 {
			break
		}
	}
	r := bytes.NewReader(raw)
	var hdr [wire.HeaderLen]byte
	for r.Len() > 0 {
		ty, p, err := wire.ReadFrame(r, &hdr, nil)
		if err != nil {
			t.Fatalf("machine queued a broken frame: %v", err)
		}
		lines = append(lines, frameLine(ty, p))
	}
	return lines, closing
}

func offsetFrame(t wire.Type, v uint64) []byte { return wire.AppendOffset(nil, t, v)[wire.HeaderLen:] }
func dataFrame(off uint64, n int) []byte {
	return wire.AppendData(nil, off, make([]byte, n))[wire.HeaderLen:]
}

func wantLines(t *testing.T, got []string, want ...string) {
	t.Helper()
	if strings.Join(got, "; ") != strings.Join(want, "; ") {
		t.Fatalf("frames:\n got  %q\n want %q", got, want)
	}
}

func TestMachineFirstCreditRidesWithTheGreeting(t *testing.T) {
	m := newServerMachine(Limits{})
	greeting := wire.AppendAccepted(nil, wire.Accepted{RecvOff: 0, Self: "a:1"})
	if err := m.attach(0, 0, greeting); err != nil {
		t.Fatal(err)
	}
	got, _ := drain(t, m)
	wantLines(t, got, "ACCEPTED", "CREDIT 1048576")
}

// Defect 1 of the MTCP core issue, at the machine: a receiver whose
// application reads nothing still takes the peer's ACKs (so its own
// output drains), and the peer can put no more DATA on the path than the
// credit; nothing waits on the application.
func TestMachineTakesControlFramesWhileTheApplicationDoesNotRead(t *testing.T) {
	m := newServerMachine(Limits{MaxRecvBuffer: 128 << 10})
	if err := m.attach(0, 0, nil); err != nil {
		t.Fatal(err)
	}
	drain(t, m)
	for off := uint64(0); off < 128<<10; off += 32 << 10 {
		if err := m.frame(true, wire.TypeData, dataFrame(off, 32<<10), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.frame(true, wire.TypeData, dataFrame(128<<10, 1), nil); !errors.Is(err, errProtocol) {
		t.Fatalf("DATA past the credit: %v, want a protocol violation", err)
	}
	// The application wrote output; the client acknowledges it while
	// its own input sits unread here.
	if k, err := m.write(make([]byte, 1000), 512<<10); k != 1000 || err != nil {
		t.Fatalf("write = %d, %v", k, err)
	}
	got, _ := drain(t, m)
	wantLines(t, got, "DATA 0+1000")
	m.takeEffects()
	if err := m.frame(true, wire.TypeAck, offsetFrame(wire.TypeAck, 1000), nil); err != nil {
		t.Fatal(err)
	}
	if fx := m.takeEffects(); !fx.wakeWrite || m.out.unacked() != 0 {
		t.Fatalf("ACK with a full receive buffer: unacked %d, wake %v", m.out.unacked(), fx.wakeWrite)
	}
}

func TestMachineGrantsCreditAsTheApplicationReads(t *testing.T) {
	const window = 256 << 10
	m := newClientMachine(Limits{MaxRecvBuffer: window})
	if err := m.attach(0, 0, nil); err != nil {
		t.Fatal(err)
	}
	got, _ := drain(t, m)
	wantLines(t, got, "CREDIT 262144")
	for off := uint64(0); off < window; off += 64 << 10 {
		if err := m.frame(true, wire.TypeData, dataFrame(off, 64<<10), nil); err != nil {
			t.Fatal(err)
		}
	}
	got, _ = drain(t, m)
	wantLines(t, got, "ACK 262144")
	buf := make([]byte, window/8)
	m.read(buf)
	got, _ = drain(t, m)
	wantLines(t, got) // an eighth of the window: not worth a frame
	m.takeEffects()
	m.read(buf)
	if !m.takeEffects().wakeWriter {
		t.Fatal("a CREDIT for a peer out of credit waits for another frame")
	}
	got, _ = drain(t, m)
	wantLines(t, got, "CREDIT 327680")
}

// While the peer has half a window of credit left, a new CREDIT rides with
// the next frame the path sends (the ACK for the data still coming).
func TestMachineCreditRidesAlongWhileThePeerHasPlenty(t *testing.T) {
	const window = 256 << 10
	m := newServerMachine(Limits{MaxRecvBuffer: window})
	if err := m.attach(0, 0, nil); err != nil {
		t.Fatal(err)
	}
	drain(t, m)
	m.takeEffects()
	if err := m.frame(true, wire.TypeData, dataFrame(0, 64<<10), nil); err != nil {
		t.Fatal(err)
	}
	m.read(make([]byte, 64<<10))
	if m.takeEffects().wakeWriter {
		t.Fatal("a CREDIT woke the writer while the peer had 3/4 of its window")
	}
	m.ackTimerFired()
	got, _ := drain(t, m)
	wantLines(t, got, "CREDIT 327680", "ACK 65536")
}

func TestMachineSenderStopsAtTheCredit(t *testing.T) {
	m := newClientMachine(Limits{})
	if err := m.attach(0, 0, nil); err != nil {
		t.Fatal(err)
	}
	drain(t, m)
	if k, _ := m.write(make([]byte, 200<<10), 512<<10); k != 200<<10 {
		t.Fatalf("write took %d", k)
	}
	got, _ := drain(t, m)
	wantLines(t, got, "DATA 0+65536") // the implicit credit of a new path
	if err := m.frame(true, wire.TypeCredit, offsetFrame(wire.TypeCredit, 150<<10), nil); err != nil {
		t.Fatal(err)
	}
	if !m.takeEffects().wakeWriter {
		t.Fatal("a CREDIT did not wake the writer")
	}
	got, _ = drain(t, m)
	wantLines(t, got, "DATA 65536+65536", "DATA 131072+22528")
}

func TestMachineDelaysSmallAcks(t *testing.T) {
	m := newServerMachine(Limits{})
	if err := m.attach(0, 0, nil); err != nil {
		t.Fatal(err)
	}
	drain(t, m)
	m.takeEffects()
	if err := m.frame(true, wire.TypeData, dataFrame(0, 100), nil); err != nil {
		t.Fatal(err)
	}
	if fx := m.takeEffects(); !fx.armAck || !fx.wakeRead {
		t.Fatalf("small DATA: %+v", fx)
	}
	got, _ := drain(t, m)
	wantLines(t, got)
	m.ackTimerFired()
	got, _ = drain(t, m)
	wantLines(t, got, "ACK 100")
}

// In eager mode a server acknowledges input only up to its last durable
// snapshot, and reports the rest as RECEIVED so the client's window moves.
func TestMachineEagerServerAcksOnlyDurableInput(t *testing.T) {
	m := newServerMachine(Limits{})
	m.side.(*serverProto).eager = true
	if err := m.attach(0, 0, nil); err != nil {
		t.Fatal(err)
	}
	drain(t, m)
	for off := uint64(0); off < 320<<10; off += 64 << 10 {
		if err := m.frame(true, wire.TypeData, dataFrame(off, 64<<10), nil); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := drain(t, m)
	wantLines(t, got, "RECEIVED 262144")
	m.side.(*serverProto).durableIn = 100
	m.maybeAck(true)
	got, _ = drain(t, m)
	wantLines(t, got, "ACK 100", "RECEIVED 327680")
}

func TestMachineClientClosesOnceTheServerHoldsEverything(t *testing.T) {
	m := newClientMachine(Limits{})
	if err := m.attach(0, 0, nil); err != nil {
		t.Fatal(err)
	}
	drain(t, m)
	m.write([]byte("bye"), 512<<10)
	m.takeEffects()
	if ok, err := m.closeApp(); !ok || err != nil {
		t.Fatalf("close: %v %v", ok, err)
	}
	if fx := m.takeEffects(); !fx.armLinger {
		t.Fatal("a closed client does not bound its linger")
	}
	got, closing := drain(t, m)
	wantLines(t, got, "DATA 0+3", "FIN 3")
	if closing {
		t.Fatal("CLOSE before the server acknowledged the input")
	}
	if err := m.frame(true, wire.TypeAck, offsetFrame(wire.TypeAck, 3), nil); err != nil {
		t.Fatal(err)
	}
	got, closing = drain(t, m)
	wantLines(t, got)
	if fx := m.takeEffects(); !closing || !fx.clientDone || m.state != stateClosed {
		t.Fatalf("after the last ACK: closing %v, state %v, done %v", closing, m.state, fx.clientDone)
	}
}

func TestMachineServerCloseHandshake(t *testing.T) {
	m := newServerMachine(Limits{})
	if err := m.attach(0, 0, nil); err != nil {
		t.Fatal(err)
	}
	drain(t, m)
	m.write([]byte("result"), 512<<10)
	m.closeApp()
	got, closing := drain(t, m)
	wantLines(t, got, "DATA 0+6", "FIN 6")
	if !closing {
		t.Fatal("a closed server with everything sent does not say CLOSE")
	}
	if m.state.terminal() {
		t.Fatal("the server forgot the connection before the client's CLOSE")
	}
	m.takeEffects()
	if err := m.frame(true, wire.TypeClose, nil, nil); !errors.Is(err, errPeerClosedPath) {
		t.Fatalf("client's CLOSE: %v", err)
	}
	if fx := m.takeEffects(); !fx.forget || !fx.ended || m.state != stateClosed {
		t.Fatalf("after the client's CLOSE: state %v, %+v", m.state, fx)
	}
}

// A CLOSE from a server the client already left (its copy went on to the
// end) does not end the connection: the current server sends its own.
func TestMachineClientIgnoresCloseFromAnOldPath(t *testing.T) {
	m := newClientMachine(Limits{})
	if err := m.attach(0, 0, nil); err != nil {
		t.Fatal(err)
	}
	if err := m.frame(false, wire.TypeClose, nil, nil); err != nil || m.peerClosed {
		t.Fatalf("old path's CLOSE: %v, peer closed %v", err, m.peerClosed)
	}
	if err := m.frame(true, wire.TypeClose, nil, nil); err != nil || m.state != statePeerClosed {
		t.Fatalf("current path's CLOSE: %v, state %v", err, m.state)
	}
	if fx := m.takeEffects(); !bytes.Equal(fx.retireCur, wire.AppendClose(nil)) || !fx.peerGone {
		t.Fatalf("the client does not answer CLOSE with CLOSE: %+v", fx)
	}
}

func TestMachineMovedMarksOnlyTheCurrentCopyMigrated(t *testing.T) {
	m := newServerMachine(Limits{})
	if err := m.attach(0, 0, nil); err != nil {
		t.Fatal(err)
	}
	if err := m.frame(false, wire.TypeMoved, nil, nil); !errors.Is(err, errPeerClosedPath) || m.state != stateActive {
		t.Fatalf("MOVED on an old path: %v, state %v", err, m.state)
	}
	m.takeEffects()
	if err := m.frame(true, wire.TypeMoved, nil, nil); !errors.Is(err, errPeerClosedPath) || m.state != stateMigrated {
		t.Fatalf("MOVED on the current path: %v, state %v", err, m.state)
	}
	if fx := m.takeEffects(); !fx.remove || !fx.ended {
		t.Fatalf("MOVED: %+v", fx)
	}
	if _, err, _ := m.read(make([]byte, 1)); !errors.Is(err.(errState).err, ErrMigrated) {
		t.Fatalf("read after MOVED: %v", err)
	}
}

func TestMachinePrepareMovesOnlyItsOwnConnection(t *testing.T) {
	m := newServerMachine(Limits{})
	if err := m.attach(0, 0, nil); err != nil {
		t.Fatal(err)
	}
	other := wire.Prepare{Target: "b:1", Migrate: wire.Migrate{ConnID: [16]byte{2}, Counter: 1}}
	if err := m.frame(true, wire.TypePrepare, wire.AppendPrepare(nil, other)[wire.HeaderLen:], nil); err != nil {
		t.Fatal(err)
	}
	if fx := m.takeEffects(); fx.prepare != nil {
		t.Fatal("a PREPARE for another connection was acted on")
	}
	own := other
	own.Migrate.ConnID = m.id
	if err := m.frame(true, wire.TypePrepare, wire.AppendPrepare(nil, own)[wire.HeaderLen:], nil); err != nil {
		t.Fatal(err)
	}
	if fx := m.takeEffects(); fx.prepare == nil || fx.prepare.Target != "b:1" {
		t.Fatalf("own PREPARE: %+v", fx.prepare)
	}
	if err := m.frame(true, wire.TypePrepare, []byte{1, 2, 3}, nil); err != nil {
		t.Fatalf("a garbled PREPARE failed the path: %v", err)
	}
	if err := m.frame(true, wire.TypeRedirect, wire.AppendRedirect(nil, wire.Redirect{Addr: "x:1"})[wire.HeaderLen:], nil); err == nil {
		t.Fatal("a server took a REDIRECT")
	}
}

// A migrating client hands its old path what was queued for it and the
// MOVED that ends it; the new path resumes output where the server said
// and starts with a credit of its own.
func TestMachineClientMigrationRetiresTheOldPath(t *testing.T) {
	m := newClientMachine(Limits{})
	if err := m.attach(0, 0, nil); err != nil {
		t.Fatal(err)
	}
	drain(t, m)
	m.write([]byte("0123456789"), 512<<10)
	drain(t, m) // sent on the old path, never acknowledged
	m.queue(wire.AppendOffset(nil, wire.TypePing, 7))
	m.takeEffects()
	if err := m.attach(4, 0, nil); err != nil {
		t.Fatal(err)
	}
	fx := m.takeEffects()
	if !fx.prev.valid || !bytes.Equal(fx.prev.bye, wire.AppendMoved(nil)) || len(fx.prev.ctrl) == 0 {
		t.Fatalf("old path: %+v", fx.prev)
	}
	got, _ := drain(t, m)
	wantLines(t, got, "CREDIT 1048576", "DATA 4+6")
	if err := m.attach(11, 0, nil); err == nil {
		t.Fatal("resuming past the end of the output accepted")
	}
}

// A client and a server machine joined by an in-memory path, driven by a
// seeded random scheduler: the applications write and read in random
// amounts, the path delivers frames in random batches, delayed ACKs fire
// at random. The streams must arrive byte for byte, no frame may be
// refused, and whenever nothing is in flight some party must be able to
// move — otherwise the protocol deadlocked, as the pre-credit one did
// when a receiver stopped reading its path.
func TestMachinePairNeverDeadlocks(t *testing.T) {
	for seed := uint64(1); seed <= 40; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { runMachinePair(t, seed) })
	}
}

type pairEnd struct {
	m       *machine
	toPeer  []byte // bytes on the wire towards the peer
	sent    []byte // what the application wrote
	got     []byte // what the application read
	total   int
	readsOK bool // the application reads at all (some runs starve one side for a while)
}

func runMachinePair(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 99))
	lim := Limits{MaxRecvBuffer: 64<<10 + rng.IntN(256<<10), SendWindow: 32<<10 + rng.IntN(256<<10), MaxSendBuffer: 1 << 20}
	cl := &pairEnd{m: newClientMachine(lim), total: rng.IntN(2 << 20)}
	sv := &pairEnd{m: newServerMachine(lim), total: rng.IntN(2 << 20)}
	if err := sv.m.attach(0, 0, wire.AppendWelcome(nil, wire.Welcome{})); err != nil {
		t.Fatal(err)
	}
	if err := cl.m.attach(0, 0, nil); err != nil {
		t.Fatal(err)
	}
	ends := [2]*pairEnd{cl, sv}
	welcomed := false
	ackPending := [2]bool{}
	starveUntil, starved := rng.IntN(20000), rng.IntN(2) // one application starts reading late
	for step := 0; ; step++ {
		if step > 2_000_000 {
			t.Fatal("no end in sight")
		}
		moved := false
		for i, e := range ends {
			e.readsOK = step >= starveUntil || i != starved
			if fx := e.m.takeEffects(); fx.armAck {
				ackPending[i] = true
			}
		}
		switch op := rng.IntN(5); op {
		case 0: // an application writes
			e := ends[rng.IntN(2)]
			if left := e.total - len(e.sent); left > 0 {
				n := min(left, 1+rng.IntN(100<<10))
				p := make([]byte, n)
				for j := range p {
					p[j] = byte(len(e.sent) + j)
				}
				k, err := e.m.write(p, lim.SendWindow)
				if err != nil {
					t.Fatal(err)
				}
				e.sent = append(e.sent, p[:k]...)
				moved = k > 0
			}
		case 1: // an application reads
			e := ends[rng.IntN(2)]
			if e.readsOK {
				buf := make([]byte, 1+rng.IntN(64<<10))
				n, _, _ := e.m.read(buf)
				e.got = append(e.got, buf[:n]...)
				moved = n > 0
			}
		case 2, 3: // a path writer sends, the peer's reader takes some
			i := rng.IntN(2)
			e, peer := ends[i], ends[1-i]
			b, _ := e.m.poll(nil, maxBatch)
			for _, buf := range b.bufs {
				e.toPeer = append(e.toPeer, buf...)
			}
			e.m.sent(b.data)
			moved = len(b.bufs) > 0
			n := pairDeliver(t, e.toPeer, peer.m, i == 1 && !welcomed, rng.IntN(4)+1)
			if n > 0 && i == 1 {
				welcomed = true
			}
			e.toPeer = e.toPeer[n:]
			moved = moved || n > 0
		case 4: // a delayed ACK fires
			i := rng.IntN(2)
			if ackPending[i] {
				ackPending[i] = false
				ends[i].m.ackTimerFired()
				moved = true
			}
		}
		_ = moved
		done := true
		for _, e := range ends {
			peer := cl
			if e == cl {
				peer = sv
			}
			if len(e.sent) < e.total || len(peer.got) < e.total {
				done = false
			}
		}
		if done {
			break
		}
		if step%1000 == 999 && !pairCanMove(cl, sv, ackPending) && step >= starveUntil {
			t.Fatalf("deadlock at step %d: client sent %d/%d got %d, server sent %d/%d got %d",
				step, len(cl.sent), cl.total, len(cl.got), len(sv.sent), sv.total, len(sv.got))
		}
	}
	if !bytes.Equal(cl.sent, sv.got) || !bytes.Equal(sv.sent, cl.got) {
		t.Fatal("a stream arrived altered")
	}
}

// pairDeliver feeds up to k whole frames from wire bytes to m and returns
// how many bytes it consumed. skipGreeting drops the server's WELCOME,
// which the client's handshake reads before the machine runs.
func pairDeliver(t *testing.T, b []byte, m *machine, skipGreeting bool, k int) int {
	t.Helper()
	r := bytes.NewReader(b)
	var hdr [wire.HeaderLen]byte
	used := 0
	for range k {
		ty, p, err := wire.ReadFrame(r, &hdr, nil)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("broken frame on the path: %v", err)
		}
		used = len(b) - r.Len()
		if skipGreeting && ty == wire.TypeWelcome {
			skipGreeting = false
			continue
		}
		if err := m.frame(true, ty, p, nil); err != nil {
			t.Fatalf("%s refused: %v", ty, err)
		}
	}
	return used
}

// pairCanMove reports whether any event could make progress: bytes on
// the wire, frames or data to send, something to read, a pending ACK
// timer, or room to write.
func pairCanMove(cl, sv *pairEnd, ackPending [2]bool) bool {
	if ackPending[0] || ackPending[1] {
		return true
	}
	for _, e := range []*pairEnd{cl, sv} {
		if len(e.toPeer) > 0 || len(e.m.ctrl) > 0 || e.m.out.sent < min(e.m.out.end(), e.m.out.limit) {
			return true
		}
		if e.m.in.unread() > 0 {
			return true
		}
		if len(e.sent) < e.total {
			if k := e.m.lim.MaxSendBuffer - e.m.out.unacked(); k > 0 && e.m.lim.SendWindow-e.m.out.unheard() > 0 {
				return true
			}
		}
	}
	return false
}
