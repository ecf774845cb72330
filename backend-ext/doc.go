// Package backendext is everything of hafe that lives in PostgreSQL: the
// "hafe" extension (control file and versioned SQL scripts, embedded here),
// the installer that creates or upgrades it, and the queries the front-ends
// run against its tables.
//
// The invariant: an outcome row is only ever inserted inside the slot's own
// transaction (committed) or after that transaction rolled back (aborted),
// and always under the primary key (batch_id, seq), so a slot has at most
// one outcome.
package backendext
