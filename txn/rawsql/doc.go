// Package rawsql decides, from a statement's text, whether a client's raw
// SQL may run inside a slot's transaction.
//
// PostgreSQL itself keeps raw SQL away from hafe's records: it runs under a
// client role without privileges on schema hafe. What privileges cannot
// express is refused here before anything runs: statements that would end,
// commit, roll back or split the slot's transaction, change the session for
// later clients of the pooled connection, or leave the client role (SET
// ROLE, RESET, set_config, DO blocks and functions of the client's own that
// could do so).
//
// The invariant: Check reads the text the way PostgreSQL's lexer does
// (comments, nested comments, quoted identifiers, Unicode escapes, dollar
// quotes, both settings of standard_conforming_strings), and refuses
// whenever any reading finds a refused statement; it may refuse a harmless
// statement, it must never let a refused one through.
package rawsql
