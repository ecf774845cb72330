// Package pgtemp starts a throwaway PostgreSQL server from the locally
// installed server binaries, for the demo and for tests.
//
// The invariant: everything it creates lives under one temporary directory
// that Stop removes; when run as root, the server runs as user postgres.
package pgtemp
