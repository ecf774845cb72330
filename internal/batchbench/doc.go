// Package batchbench measures hafe's batch API against a baseline: Plain,
// a chi+pgx handler that takes the same request body and runs the same
// transactions but records nothing (no batch row, no outcome, no
// idempotency), and Run, a load generator that drives either over real HTTP
// with concurrent clients sending batches of the demo bank's transfers.
//
// The one thing to keep in mind: both sides must get the very same
// workload (same bodies from the same seed, same pool size, same server),
// or the ratio means nothing.
package batchbench
