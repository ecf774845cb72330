package mtcp

import (
	"testing"

	"hafe.dev/hafe/mtcp/internal/wire"
)

// The handover rule, decided without goroutines: the state for a counter
// goes out once, whatever order PREPAREs, pushes and FETCHes meet in.

func newTestHandover(t *testing.T) (*handover, func(counter uint64) wire.Migrate) {
	t.Helper()
	secret := randomSecret()
	id := randomID()
	h := &handover{secret: secret, counter: 1, state: wire.ConnState{ConnID: id, Secret: secret, State: []byte("s")}}
	migrate := func(counter uint64) wire.Migrate {
		m := wire.Migrate{ConnID: id, Counter: counter, Origin: "a:1"}
		m.MAC = migrateMAC(secret, m)
		return m
	}
	return h, migrate
}

func TestHandoverGivesACounterOnce(t *testing.T) {
	h, migrate := newTestHandover(t)
	if v := h.request(migrate(2)); !v.ok {
		t.Fatalf("first FETCH for counter 2: %+v", v.refuse)
	}
	if v := h.request(migrate(2)); v.ok || v.refuse.Code != RefuseReplayedCounter {
		t.Fatalf("second FETCH for counter 2: ok %v, %v", v.ok, v.refuse)
	}
	// The new server died before the client heard from it: the client
	// comes back with the next counter, and gets the state again.
	if v := h.request(migrate(3)); !v.ok || v.drop != nil {
		t.Fatalf("FETCH for counter 3: ok %v, %v, drop %v", v.ok, v.refuse, v.drop)
	}
	forged := migrate(4)
	forged.MAC[0] ^= 1
	if v := h.request(forged); v.ok || v.refuse.Code != RefuseBadMAC {
		t.Fatalf("forged MIGRATE: ok %v, %v", v.ok, v.refuse)
	}
}

// A PREPARE froze the connection and pushed it (counter 2); a FETCH for
// the same MIGRATE crosses the push (the hedged FETCH, or a FETCH that
// waited for the connection's lock while the PREPARE froze it). It waits
// for the push's answer and gets the state only if the push was refused.
func TestHandoverFetchCrossingAPush(t *testing.T) {
	for _, tt := range []struct {
		outcome  pushOutcome
		wantOK   bool
		wantCode RefusalCode
	}{
		{pushKept, false, RefuseReplayedCounter},
		{pushRefused, true, 0},
		{pushUnknown, false, RefuseStateUnavailable},
		{pushPending, false, RefuseStateUnavailable}, // waiting timed out
	} {
		h, migrate := newTestHandover(t)
		m := migrate(2)
		h.counter, h.push = 2, newPushState(m, "b:1")
		v := h.request(m)
		if v.waitPush != h.push {
			t.Fatalf("%v: a FETCH for the pushed MIGRATE did not wait for the push", tt.outcome)
		}
		v.waitPush.answered(tt.outcome)
		v = h.afterPush(v.waitPush, m)
		if v.ok != tt.wantOK || (!v.ok && v.refuse.Code != tt.wantCode) {
			t.Fatalf("%v: ok %v, %v", tt.outcome, v.ok, v.refuse)
		}
		// However many FETCHes cross it, at most one gets the state.
		if v := h.request(m); v.ok {
			t.Fatalf("%v: a second FETCH got the state too", tt.outcome)
		}
	}
}

// After a push was kept (or may have been), a MIGRATE with a higher
// counter takes the state and the pushed copy is dropped; a refused push
// leaves no copy to drop.
func TestHandoverHigherCounterDropsThePushedCopy(t *testing.T) {
	for _, tt := range []struct {
		outcome  pushOutcome
		wantDrop bool
	}{{pushKept, true}, {pushUnknown, true}, {pushPending, true}, {pushRefused, false}} {
		h, migrate := newTestHandover(t)
		h.counter, h.push = 2, newPushState(migrate(2), "b:1")
		h.push.answered(tt.outcome)
		v := h.request(migrate(3))
		if !v.ok {
			t.Fatalf("%v: counter 3 refused: %v", tt.outcome, v.refuse)
		}
		if (v.drop != nil) != tt.wantDrop || (v.drop != nil && (v.drop.target != "b:1" || v.drop.counter != 2)) {
			t.Fatalf("%v: drop %+v", tt.outcome, v.drop)
		}
		if h.push != nil || h.counter != 3 {
			t.Fatalf("%v: record not moved on: counter %d", tt.outcome, h.counter)
		}
	}
}

// A push's outcome is decided once: a late "kept" cannot overturn a
// refusal a FETCH already acted on.
func TestPushOutcomeIsDecidedOnce(t *testing.T) {
	h, migrate := newTestHandover(t)
	m := migrate(2)
	h.counter, h.push = 2, newPushState(m, "b:1")
	h.push.answered(pushRefused)
	if v := h.afterPush(h.push, m); !v.ok {
		t.Fatalf("refused push: %v", v.refuse)
	}
	h.push.answered(pushKept)
	if h.push.outcome != pushRefused {
		t.Fatalf("outcome changed to %v", h.push.outcome)
	}
}

func TestHandoverTrimsOutputTheClientHas(t *testing.T) {
	h, migrate := newTestHandover(t)
	h.state.OutOff, h.state.Output, h.state.SnapOut = 10, []byte("0123456789"), 20
	m := migrate(2)
	m.RecvOff = 14
	m.MAC = migrateMAC(h.secret, m)
	v := h.request(m)
	if !v.ok || v.state.OutOff != 14 || string(v.state.Output) != "456789" {
		t.Fatalf("trimmed state: off %d %q (%v)", v.state.OutOff, v.state.Output, v.refuse)
	}
	if string(h.state.Output) != "0123456789" {
		t.Fatal("the record itself was trimmed")
	}
}
