// Package rawsql decides, from a statement's text, whether a client's raw
// SQL may run inside a slot's transaction.
//
// PostgreSQL itself keeps raw SQL away from hafe's records: it runs on
// sessions that log in as a client role without privileges on schema hafe,
// so there is no other role to go back to, and each session is closed
// after one transaction. That, not this package, is the security
// boundary: any function that runs SQL from a string (query_to_xml,
// ts_stat, …) escapes a check of the text. What is refused here keeps a
// client's transaction whole and its mistakes clear: statements that would
// end, commit, roll back or split the slot's transaction, change the
// session or the client role for later clients (SET without LOCAL, ALTER
// ROLE, …), or switch roles (SET ROLE, set_config('role', …), DO blocks
// and functions of the client's own).
//
// The invariant: Check reads the text the way PostgreSQL's lexer does
// (comments, nested comments, quoted identifiers, Unicode escapes, dollar
// quotes, both settings of standard_conforming_strings), and refuses
// whenever any reading finds a refused statement; it may refuse a harmless
// statement, it must never let a refused one through.
package rawsql
