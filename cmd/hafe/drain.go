package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"hafe.dev/hafe/client"
)

const drainAbout = `Drains one front-end before it is stopped or upgraded: it takes no new
batches (its /readyz answers 503, so load balancers move on), and its MTCP
clients' connections move to the other front-ends, running batches
included, which go on there without a new request. Batches sent over plain
HTTP finish where they run. SIGTERM to hafe serve drains the same way.

The front-end keeps running once drained; stop it then.

Exit status: 0 drained; 4 still draining when --wait ran out (run it again);
1 the front-end refused (wrong --admin-token: 401) or did not answer.`

func runDrain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("drain", "drain URL --admin-token T [--wait 30s]", drainAbout, stderr)
	token := fs.String("admin-token", "", "the front-end's --admin-token")
	ca := fs.String("ca", "", caFlagHelp)
	wait := fs.Duration("wait", 30*time.Second, "how long to wait for the front-end to be drained (at most 10m)")
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return usageError{cmd: "drain", err: errors.New("give the front-end's URL, e.g. http://10.0.0.7:8080")}
	}
	if *wait < 0 || *wait > 10*time.Minute {
		return usageError{cmd: "drain", err: fmt.Errorf("--wait %v: want 0s to 10m", *wait)}
	}
	tc, err := clientTLSConfig(*ca)
	if err != nil {
		return usageError{cmd: "drain", err: err}
	}
	admin, err := client.NewAdmin(rest[0], *token, adminHTTPClient(tc))
	if err != nil {
		return usageError{cmd: "drain", err: err}
	}
	start := time.Now()
	st, err := admin.Drain(ctx, *wait)
	if errors.Is(err, client.ErrCertificate) {
		return exitError{code: 1, err: caHint(err)}
	}
	if err != nil {
		return err
	}
	took := time.Since(start).Round(time.Millisecond)
	if st.Status != "drained" {
		fmt.Fprintf(stdout, "%s still draining after %v: %d batches running, %d MTCP connections left\n", rest[0], took, st.BatchesInFlight, st.MTCPConnections)
		return exitError{code: 4}
	}
	fmt.Fprintf(stdout, "%s drained in %v: no batch runs there, no MTCP connection is left; stop it now\n", rest[0], took)
	return nil
}
