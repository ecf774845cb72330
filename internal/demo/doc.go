// Package demo is "hafe demo": a throwaway PostgreSQL, three front-ends as
// separate processes (this executable's "serve"), a batch of transfers whose
// serving front-end is killed mid-stream, and the checks that every transfer
// ran once.
//
// The invariant: everything a run starts is stopped and removed when it
// returns, whether it succeeded, failed or was interrupted.
package demo
