package main

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"hafe.dev/hafe/internal/pgtemp"
)

func TestServeOnADatabaseWithoutHafeSaysRunDBInstallOnce(t *testing.T) {
	bin := buildServeBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pg, err := pgtemp.Start(ctx, pgtemp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })
	url, err := pg.NewDatabase(ctx, "bare")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, err := exec.CommandContext(ctx, bin, "serve", "--db", url, "--listen", "127.0.0.1:0", "--allow-superuser").CombinedOutput()
	if code := serveExitCode(err); code != 1 {
		t.Fatalf("exit %d, want 1; output:\n%s", code, out)
	}
	if n := strings.Count(string(out), "run hafe db install"); n != 1 {
		t.Fatalf("%q said %d times, want once; output:\n%s", "run hafe db install", n, out)
	}
	if want := "hafe: hafe is not installed in this database: run hafe db install"; !strings.HasPrefix(string(out), want) {
		t.Fatalf("output does not start with %q:\n%s", want, out)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("took %v to give up", d)
	}
}

func TestServeRefusesAnIDThatIsAlive(t *testing.T) {
	first := startServe(t, "--id", "fe-twin", "--install", "--heartbeat", "200ms")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, buildServeBinary(t), "serve", "--db", first.url, "--listen", "127.0.0.1:0",
		"--allow-superuser", "--id", "fe-twin").CombinedOutput()
	if code := serveExitCode(err); code != 1 {
		t.Fatalf("exit %d, want 1; output:\n%s", code, out)
	}
	want := `hafe: refusing to serve: a front-end with id "fe-twin" is already running (serving ` + first.addr
	if !strings.Contains(string(out), want) || !strings.Contains(string(out), "give this front-end another --id") {
		t.Fatalf("output lacks %q and the advice:\n%s", want, out)
	}
	// The running one is untouched.
	waitServeReady(t, "http://"+first.addr)
	select {
	case err := <-first.exited:
		t.Fatalf("the first front-end exited: %v\n%s", err, first.logs)
	default:
	}
}
