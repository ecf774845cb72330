// Package sql holds the SQL that hafe ships besides the back-end extension:
// the catalog of named transaction templates, the demo schema and sample
// batches. All of it is embedded in the binary.
//
// The invariant: templates use only named arguments (@name), so a template's
// meaning does not depend on argument order.
package sql
