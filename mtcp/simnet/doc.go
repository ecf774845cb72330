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
// production data path of `hafe serve` (docs/mtcp.md): production connections
// use the kernel's TCP.
//
// Loss decisions come from per-direction PRNGs seeded from Config.Seed, but
// time is real, so runs are repeatable in distribution, not bit for bit.
package simnet
