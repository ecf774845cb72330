package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"hafe.dev/hafe/internal/demo"
)

const demoAbout = `Shows a batch surviving a front-end crash, on this machine, in seconds:

  1. starts a throwaway PostgreSQL (initdb in a temporary directory from the
     locally installed server binaries; without them, a container from
     $HAFE_PG_IMAGE, default hafe-postgres:15), installs hafe and a demo bank
     of 100 accounts holding 1000.00 each;
  2. starts three front-ends (hafe serve) as separate processes;
  3. submits a batch of transfers to the first over MTCP, kills that
     front-end with SIGKILL a third of the way through: the client's
     connection moves to another front-end, which takes the batch over and
     goes on with the same response, without a second request; two thirds
     of the way through it drains (SIGTERM) the front-end then serving, and
     the connection moves again. With --http the batch goes over plain
     HTTP instead, and the client resumes it on another front-end with the
     same Idempotency-Key;
  4. over MTCP, then sends a second batch the way an unchanged application
     would: plain curl -N (Go's net/http when curl is missing) to a local
     hafe agent, which carries the connection over MTCP; the front-end
     serving it is killed a third of the way through, and curl's response
     goes on without curl knowing (--agent=false skips this);
  5. checks from the database that every transfer ran exactly once: one
     outcome per slot, as many commits as reported, balances that match the
     committed transfers, and a total still at 100000.00.

Everything it starts is stopped and removed at the end, or on Ctrl-C.
The exit status is 0 when every check holds. With --stay the cluster stays
up after the checks (the killed front-end restarted) and the demo prints
the dashboard, metrics and a curl line to try, until Ctrl-C.`

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", "demo [flags]", demoAbout, stderr)
	pgSource := fs.String("postgres", "auto", "where PostgreSQL comes from: local (server binaries, see HAFE_PG_BINDIR), container (testcontainers, image HAFE_PG_IMAGE), or auto (local, else container)")
	n := fs.Int("transactions", 300, "transfers in the sample batch")
	seed := fs.Uint64("seed", 1, "seed of the sample batch's random transfers")
	killAt := fs.Int("kill-at", 0, "kill the serving front-end when this many lines have arrived (default: a third of --transactions)")
	keep := fs.Bool("keep", false, "keep the work directory with the front-ends' logs")
	stay := fs.Bool("stay", false, "keep the cluster up after the checks and print its URLs, until Ctrl-C")
	overHTTP := fs.Bool("http", false, "send the batch over plain HTTP, resumed after the kill with the same Idempotency-Key, instead of over MTCP")
	viaAgent := fs.Bool("agent", true, "over MTCP, also send a second batch with curl through hafe agent and kill the front-end serving it")
	drainAt := fs.Int("drain-at", 0, "over MTCP, drain the front-end serving the batch when this many lines have arrived (default: two thirds of --transactions; -1: no drain)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *n < 3 {
		return errors.New("demo: --transactions must be at least 3")
	}
	if *killAt == 0 {
		*killAt = *n / 3
	}
	if *killAt < 1 || *killAt > *n {
		return fmt.Errorf("demo: --kill-at must be between 1 and --transactions (%d)", *n)
	}
	switch {
	case *drainAt == 0:
		*drainAt = 2 * *n / 3
	case *drainAt < 0:
		*drainAt = 0
	case *drainAt > *n:
		return fmt.Errorf("demo: --drain-at must be at most --transactions (%d)", *n)
	}
	switch *pgSource {
	case "auto", "local", "container":
	default:
		return fmt.Errorf("demo: --postgres %q: want auto, local or container", *pgSource)
	}
	return demo.Run(ctx, demo.Options{Postgres: *pgSource, Transactions: *n, KillAt: *killAt, Seed: *seed, Keep: *keep, Stay: *stay, HTTP: *overHTTP, DrainAt: *drainAt, Agent: *viaAgent && !*overHTTP}, stdout)
}
