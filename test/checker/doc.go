// Package checker proves hafe's guarantees on the results of a fault test:
// given the back-end's rows for one batch and every response stream that
// clients captured for it (raw bytes, in any number, cut off or complete),
// it lists each way they break the guarantees G1-G6 of docs/design.md.
//
//   - G1: a slot has at most one outcome row and, where the workload records
//     an application-level effect per execution (a runs(slot) table), a
//     committed slot ran exactly once and an uncommitted one left no effect;
//   - G2: every slot line a client received — committed or aborted — is a
//     durable outcome whose stored report equals the line byte for byte;
//   - G3: each stream reports slots 1, 2, 3, … in order without gaps, a line
//     for one seq is the same bytes in every stream that has it, and the
//     done line comes after the last slot with totals that match the rows;
//   - G4: outcome epochs never go down as seq goes up, so no fenced owner
//     wrote after its successor.
//
// Load reads a batch's rows from PostgreSQL, Verify judges them against the
// streams (a pure function, so each violation kind is unit-tested on
// synthetic input), and Check does both.
//
// The invariant: the checker trusts nothing the front-ends say about
// themselves — only the database and the bytes the clients received.
package checker
