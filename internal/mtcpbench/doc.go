// Package mtcpbench measures mtcp the way the seed measured Migratory TCP:
// the one-way migration microbenchmark broken down by phase (RunMigrate, on
// loopback or on a simulated network whose links add a delay), the
// streaming experiment in which a client's rate policy leaves a server that
// slowed down (RunStream), and the cost of an MTCP connection against raw
// TCP in bulk throughput and idle memory (RunThroughput, RunIdleMemory).
// `hafe bench migrate|stream|mtcp` prints what these return.
//
// The one thing to keep in mind: every figure is set beside a baseline
// measured in the same run on the same machine (a plain TCP connect plus
// one round trip, raw TCP, the stream's own pre-slowdown rate), because
// only the ratio means anything on a shared machine.
package mtcpbench
