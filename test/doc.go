// Package test holds hafe's integration and fault tests: real PostgreSQL and
// real hafe front-ends in containers on a Docker network (see package
// harness), driven from the test process over their published ports.
//
// The invariant: a test that needs Docker calls harness.RequireDocker first,
// so it skips cleanly where Docker is missing — except in CI (CI=true),
// where that is a failure.
package test
