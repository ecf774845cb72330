package test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"hafe.dev/hafe/test/harness"
)

// TestHarnessFaultsDoWhatTheySay checks the harness's fault operations on
// stand-in front-ends (test/internal/fakehafe): who can still reach a
// container after Kill, Disconnect, Isolate and Pause, and that it comes back
// on the same URL.
func TestHarnessFaultsDoWhatTheySay(t *testing.T) {
	harness.RequireDocker(t)
	image := harness.BuildHafeImage(t, "hafe-fakehafe:test", "./test/internal/fakehafe")
	nw := harness.NewNetwork(t)
	pg := harness.StartPostgres(t, nw, harness.PostgresConfig{})
	fes := harness.StartHafes(t, nw, 2, func(i int) harness.HafeConfig {
		id := []string{"fe1", "fe2"}[i]
		return harness.HafeConfig{Alias: id, Image: image, Args: harness.ServeArgs(pg.NetworkURL, id)}
	})
	fe1, fe2 := fes[0], fes[1]

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	// fromTest: the test process reaches the front-end on its URL and it
	// answers with its own id.
	fromTest := func(h *harness.Hafe) bool {
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get(h.URL + "/whoami")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if got := strings.TrimSpace(string(body)); got != h.Alias {
			t.Fatalf("%s answered as %q", h.URL, got)
		}
		return true
	}
	// fromNetwork: the PostgreSQL container reaches the front-end by alias.
	fromNetwork := func(h *harness.Hafe) bool {
		code, _, err := pg.Testcontainer().Exec(ctx, []string{"timeout", "3", "bash", "-c", "echo > /dev/tcp/" + h.Alias + "/8080"})
		if err != nil {
			t.Fatal(err)
		}
		return code == 0
	}
	expect := func(step string, h *harness.Hafe, test, network bool) {
		t.Helper()
		if got := fromTest(h); got != test {
			t.Errorf("%s: %s reachable from the test = %v, want %v", step, h.Alias, got, test)
		}
		if got := fromNetwork(h); got != network {
			t.Errorf("%s: %s reachable from the network = %v, want %v", step, h.Alias, got, network)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	expect("started", fe1, true, true)
	expect("started", fe2, true, true)

	must(fe1.Kill(ctx))
	expect("fe1 killed", fe1, false, false)
	expect("fe1 killed", fe2, true, true)

	must(fe2.Disconnect(ctx))
	expect("fe2 disconnected", fe2, true, false)
	must(fe2.Reconnect(ctx))
	expect("fe2 reconnected", fe2, true, true)

	url := fe2.URL
	must(fe2.Isolate(ctx))
	expect("fe2 isolated", fe2, false, false)
	must(fe2.Rejoin(ctx))
	if fe2.URL != url {
		t.Errorf("fe2 rejoined on %s, was %s", fe2.URL, url)
	}
	expect("fe2 rejoined", fe2, true, true)

	url = fe1.URL
	must(fe1.Start(ctx))
	if fe1.URL != url {
		t.Errorf("fe1 restarted on %s, was %s", fe1.URL, url)
	}
	expect("fe1 restarted", fe1, true, true)

	must(fe2.Pause(ctx))
	if fromTest(fe2) {
		t.Error("fe2 paused: still answers")
	}
	must(fe2.Unpause(ctx))
	expect("fe2 unpaused", fe2, true, true)

	code, out := harness.RunImage(t, nw, image, time.Minute, "version")
	if code != 0 || !strings.Contains(out, "fakehafe") {
		t.Errorf("one-shot run: exit %d, output %q", code, out)
	}
}
