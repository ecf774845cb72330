package test

import (
	"os"
	"testing"
	"time"

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

// TestKnownBugMTCPMigratedTakeoverWaitsForOrphanedSlot: as
// TestMTCPIsolatedFrontEnd (fe1 unplugged from every network while its
// slow slot sleeps in a statement), with the front-ends'
// --idle-in-transaction-timeout at its default, 30s. The client moves at
// once and fe2 takes the batch over, but fe1's slot transaction, cut off
// before it wrote its outcome, is still open at PostgreSQL holding its
// account rows: fe2's run of that slot waits on them until
// idle_in_transaction_session_timeout ends the orphan. fe2 even logs
// "slot 21: not started or rolled back".
//
// Known bug: txn.OpenRequest.Migrated promises that "an open slot
// transaction of the owner's is terminated after MigratedFenceGrace", but
// the claim fences only sessions that block it on the batch row, which a
// slot takes when it writes its outcome; and the previous run's sessions
// are fenced only when its heartbeat is stale, which it is not a moment
// after the cut. The client stalls for the idle timeout, and worse: with
// both defaults at 30s, fe2's run of the slot hits --raw-sql-timeout
// (30s) before the orphan is ended, so slot 21, which commits in the
// fault-free run, is reported aborted (raw_sql_timeout) and the done line
// says 53 committed, 7 aborted instead of 54 and 6: the partition changed
// the batch's result. Measured: next line 28.7s after the cut (8.3-8.8s
// with the tests' usual 5s idle timeout), where 2s of the orphan's
// remaining sleep plus fe2's own 2s would do: the test allows 10s and
// compares with the reference run as every MTCP test does.
func TestKnownBugMTCPMigratedTakeoverWaitsForOrphanedSlot(t *testing.T) {
	knownMTCPBug(t, "a takeover after a migration leaves the old owner's open slot transaction to idle_in_transaction_session_timeout")
	testMTCPFault(t, mtcpFault{name: "isolated", slow: slowStatement, inject: (*harness.Hafe).Isolate, undo: (*harness.Hafe).Rejoin,
		extra: []string{"--idle-in-transaction-timeout", "30s"}, maxStall: 10 * time.Second})
}
