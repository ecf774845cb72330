package mtcp

import (
	"bytes"
	"crypto/hmac"

	"hafe.dev/hafe/mtcp/internal/wire"
)

// handover is an origin's record of a connection it handed over, and the
// rule that gives its state to exactly one server per migration counter.
// It is pure decision logic, with no locks, timers or sockets: the
// Listener calls it under its own lock and carries out the verdicts
// (answer a FETCH, wait for a push's answer, tell a server to drop a
// pushed copy).
//
// The rule: the state for a counter goes out once, by PUSH (after the
// client's PREPARE) or by answer to a FETCH. A FETCH for the MIGRATE a
// push carries waits for the push's answer and gets the state only if the
// push was refused; a push without an answer leaves that counter without
// an owner (the client retries with the next). A MIGRATE with a higher
// counter means the last new server failed before the client heard from
// it: the state goes out again, and a copy pushed for the old counter is
// dropped.
type handover struct {
	secret  []byte
	counter uint64         // the counter the state was last handed over under
	state   wire.ConnState // Output from the acknowledged offset on
	push    *pushState     // the handover at counter went out as a PUSH
}

// handoverVerdict is what to do with a request for a handed-over state.
type handoverVerdict struct {
	state    wire.ConnState // the state to send, when ok
	ok       bool
	refuse   *RefusalError
	waitPush *pushState // undecided push for this very MIGRATE: wait, then ask afterPush
	drop     *dropOrder // a server holds a copy pushed for an older counter
}

// dropOrder tells the server at target to forget the state pushed to it
// for counter (or below).
type dropOrder struct {
	target  string
	counter uint64
}

// request decides a FETCH (or the origin's own client coming back) for
// the state under m.
func (h *handover) request(m wire.Migrate) handoverVerdict {
	ps := h.push
	if ps != nil && m.Counter == h.counter && hmac.Equal(m.MAC, ps.mac) {
		if ps.outcome == pushPending {
			return handoverVerdict{waitPush: ps}
		}
		return h.afterPush(ps, m)
	}
	if code := checkMigrate(h.secret, h.counter, m); code != 0 {
		return handoverVerdict{refuse: refusal(code, "%s", code)}
	}
	st := h.state
	if m.RecvOff > st.OutOff+uint64(len(st.Output))+maxRegenerateGap {
		return handoverVerdict{refuse: refusal(RefuseBadRequest, "received offset out of range")}
	}
	st.Counter = h.counter
	trimOutput(&st, m.RecvOff)
	v := handoverVerdict{state: st, ok: true}
	if ps != nil && ps.outcome != pushRefused {
		// The copy pushed for the old counter must not be claimed now.
		v.drop = &dropOrder{target: ps.target, counter: h.counter}
	}
	h.counter = m.Counter
	h.push = nil
	return v
}

// afterPush decides a FETCH for the MIGRATE a push carried once the push
// is answered (or waiting for the answer timed out): the state goes out
// only if the push was refused, the counter has not moved on meanwhile,
// and no FETCH took it before.
func (h *handover) afterPush(ps *pushState, m wire.Migrate) handoverVerdict {
	switch {
	case h.push != ps || h.counter != m.Counter:
		return handoverVerdict{refuse: refusal(RefuseReplayedCounter, "the connection moved on")}
	case ps.outcome == pushPending || ps.outcome == pushUnknown:
		// The new server may hold the state: handing it out here too
		// could make two owners. The client retries with a new counter.
		return handoverVerdict{refuse: refusal(RefuseStateUnavailable, "push not answered")}
	case ps.outcome == pushKept || ps.fetched:
		return handoverVerdict{refuse: refusal(RefuseReplayedCounter, "already pushed")}
	}
	ps.fetched = true
	st := h.state
	trimOutput(&st, m.RecvOff)
	return handoverVerdict{state: st, ok: true}
}

// answered records the push's outcome; it is decided once.
func (ps *pushState) answered(o pushOutcome) {
	if ps.outcome == pushPending {
		ps.outcome = o
	}
}

// newPushState is the record of a push about to go out for m to target.
func newPushState(m wire.Migrate, target string) *pushState {
	return &pushState{mac: bytes.Clone(m.MAC), target: target, done: make(chan struct{})}
}
