// Package simnet is an in-process simulated IPv4 network for tests and
// benchmarks of code that speaks TCP, such as mtcp's failure detection and
// rate policy. Every host is its own gVisor netstack (ipv4 + tcp) and gets
// ordinary net.Listener and net.Conn values; hosts are joined pairwise by
// links whose delay, loss, bandwidth and partition can be changed while
// connections are open. No root, no TUN device, no real sockets.
//
// The invariant: a link delivers packets in the order they were sent, each
// no earlier than its delay plus its serialisation time after it was sent;
// it may drop a packet (loss, full queue, partition) but never reorders,
// duplicates or corrupts one. Only linked hosts can reach each other.
//
// simnet is for tests and benchmarks only. It must never be on the
// production data path of `hafe serve` (DESIGN §3): production connections
// use the kernel's TCP.
//
// Loss decisions come from per-direction PRNGs seeded from Config.Seed, but
// time is real, so runs are repeatable in distribution, not bit for bit.
//
// Building: the pinned gVisor (v0.0.0-20251011013117-af7a19336e55) does not
// compile with Go 1.26 (google/gvisor#12916: gvisor.dev/gvisor/pkg/sync
// declares its runtime constants twice), so every other file of this package
// carries the build tag "simnet" and `go build ./...` skips it. Run its tests
// with a gVisor that carries the fix:
//
//	go test -tags simnet ./mtcp/simnet
//
// after bumping gvisor.dev/gvisor to a go-branch version that includes the
// fix (v0.0.0-20260905035102-160fafc42237 works unchanged), or with a
// go.work that replaces it by a patched copy (see gvisorfix.sh next to this
// file). Drop the tag and the script once go.mod is fixed.
package simnet
