// Package txn executes batches of transactions against PostgreSQL with
// exactly-once outcomes.
//
// Every transaction of a batch has a slot (batch id, seq). The slot's outcome
// row is written inside the transaction itself, under a unique key, so a slot
// commits at most once whatever races between executors occur. The invariant a
// reader must keep in mind: nothing is reported for a slot until its outcome is
// durable, and a report is always the stored rendered line, never a fresh
// rendering, so every executor emits identical bytes for a slot.
package txn
