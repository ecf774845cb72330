package backendext

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestCheckInstalledSaysWhatIsMissing(t *testing.T) {
	ctx := context.Background()
	c := connect(t)
	if err := CheckInstalled(ctx, c); !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("empty database: %v, want ErrNotInstalled", err)
	}
	if _, err := Install(ctx, c, InstallOptions{ForceSchema: true, Version: "1.0"}, nil); err != nil {
		t.Fatal(err)
	}
	err := CheckInstalled(ctx, c)
	if !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), "hafe 1.0") || !strings.Contains(err.Error(), DefaultVersion) {
		t.Fatalf("hafe 1.0: %v, want ErrNotInstalled naming 1.0 and %s", err, DefaultVersion)
	}
	if _, err := Install(ctx, c, InstallOptions{ForceSchema: true}, nil); err != nil {
		t.Fatal(err)
	}
	if err := CheckInstalled(ctx, c); err != nil {
		t.Fatalf("after install: %v", err)
	}
}

func TestMemberIDIsRefusedOnlyWhileItsHolderHeartbeats(t *testing.T) {
	ctx := context.Background()
	c := connect(t)
	if _, err := Install(ctx, c, InstallOptions{ForceSchema: true}, nil); err != nil {
		t.Fatal(err)
	}
	const liveness = time.Second

	// Nobody under the name.
	if err := CheckMemberIDFree(ctx, c, "fe-a", liveness, 20*time.Millisecond, nil); err != nil {
		t.Fatalf("no member: %v", err)
	}

	// A run that heartbeats: refused, long before liveness.
	beat := func(incarnation string) {
		t.Helper()
		if err := Heartbeat(ctx, c, Member{ID: "fe-a", Incarnation: incarnation, HTTPAddr: "10.0.0.1:8080"}); err != nil {
			t.Fatal(err)
		}
	}
	beat("run-1")
	stop := make(chan struct{})
	done := make(chan struct{})
	// Its own connection: pgx.Conn is not safe for concurrent use.
	other, err := pgx.Connect(ctx, c.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				Heartbeat(ctx, other, Member{ID: "fe-a", Incarnation: "run-1", HTTPAddr: "10.0.0.1:8080"})
			}
		}
	}()
	waited := 0
	err = CheckMemberIDFree(ctx, c, "fe-a", liveness, 20*time.Millisecond, func(time.Duration) { waited++ })
	close(stop)
	<-done
	var alive *MemberAliveError
	if !errors.As(err, &alive) || alive.ID != "fe-a" || alive.HTTPAddr != "10.0.0.1:8080" {
		t.Fatalf("live member: %v, want a MemberAliveError for fe-a at 10.0.0.1:8080", err)
	}
	if waited != 1 {
		t.Fatalf("waiting reported %d times, want once", waited)
	}

	// A run that stopped heartbeating (crashed): waited out, then free.
	beat("run-2")
	start := time.Now()
	if err := CheckMemberIDFree(ctx, c, "fe-a", liveness, 20*time.Millisecond, nil); err != nil {
		t.Fatalf("crashed member: %v", err)
	}
	if d := time.Since(start); d > liveness+2*time.Second {
		t.Fatalf("took %v to declare a silent member gone, liveness %v", d, liveness)
	}
	// Its heartbeat is now older than liveness: free at once.
	if err := CheckMemberIDFree(ctx, c, "fe-a", liveness, 20*time.Millisecond, func(time.Duration) { t.Error("waited for a stale member") }); err != nil {
		t.Fatal(err)
	}
}
