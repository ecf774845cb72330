package test

import (
	"os"
	"testing"

	"hafe.dev/hafe/test/harness"
)

// The tests in this file show MTCP bugs found and not fixed yet. They skip
// unless HAFE_KNOWN_BUGS is set, so that `make test` stays green; run them
// with
//
//	HAFE_KNOWN_BUGS=1 go test -count=1 -run KnownBug ./test/ -v
//
// and drop the skip with the fix.
func knownMTCPBug(t *testing.T, what string) {
	t.Helper()
	if os.Getenv("HAFE_KNOWN_BUGS") == "" {
		t.Skipf("known bug: %s (set HAFE_KNOWN_BUGS=1 to run)", what)
	}
}

// TestKnownBugMTCPFrontEndCutOffFromDatabase: fe1 is cut off the test
// network (PostgreSQL and its peers) while its slow slot is in a
// statement, but its client's path stays up: the client keeps getting
// answers to its pings, so it never migrates. fe1's batch waits
// --settle-timeout for the database (5s here, a minute by default), then
// fe1 writes {"error":{"code":"interrupted",…"retry with the same
// Idempotency-Key to resume"}} and ends the stream.
//
// Known bug: the MTCP client sent no Idempotency-Key (the front-ends key
// the batch by the connection), so it cannot resume the batch: a new
// request is a new batch, and the slots fe1 committed would run again. The
// batch stays "running" with a third of its slots done. A front-end that
// cannot go on with an MTCP connection's batch should hand the connection
// to another front-end (redirect it, as a drain does; eager mode has its
// state in the database) instead of ending the stream. Measured: the
// stream ends 75s after the cut with the default settle timeout, 30s
// with 5s (DNS and connect attempts on top); the connection never
// migrated.
func TestKnownBugMTCPFrontEndCutOffFromDatabase(t *testing.T) {
	knownMTCPBug(t, "a front-end cut off from the database ends its MTCP client's stream with an error the client cannot resume from")
	testMTCPFault(t, mtcpFault{name: "cut off", slow: slowStatement, inject: (*harness.Hafe).Disconnect, undo: (*harness.Hafe).Reconnect,
		extra: []string{"--settle-timeout", "5s"}})
}
