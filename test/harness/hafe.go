package harness

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	tcnetwork "github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"
)

// HafePort is the port hafe listens on inside its container.
const HafePort = "8080/tcp"

// HafeConfig describes one hafe container; zero fields take the defaults.
type HafeConfig struct {
	// Alias is the network alias and front-end name, e.g. "fe1".
	Alias string
	// Args follow the /hafe entrypoint, e.g. ServeArgs(pg.NetworkURL, "fe1").
	Args []string
	// Env is the container's environment (HAFE_* settings).
	Env map[string]string
	// ReadyPath is polled over HTTP until it answers 200; default "/healthz".
	// "-" waits only for the port to accept connections.
	ReadyPath string
	// StartupTimeout bounds the wait for readiness, default 1 minute.
	StartupTimeout time.Duration
	// Image overrides HafeImage().
	Image string
}

// ServeArgs is the command line of a front-end on the test network:
// `serve --db DB --listen :8080 --id ID` followed by extra.
func ServeArgs(db, id string, extra ...string) []string {
	return append([]string{"serve", "--db", db, "--listen", ":8080", "--id", id}, extra...)
}

// Hafe is a running hafe container.
type Hafe struct {
	*Container
	Config HafeConfig
	// URL reaches it from the test process, e.g. http://localhost:32772.
	// Start and Rejoin update it if the published port changed (it does not
	// where ports are pinned).
	URL string
	// NetworkURL reaches it from other containers, e.g. http://fe1:8080.
	NetworkURL string
}

// StartHafe starts a hafe container from HAFE_IMAGE (rebuilt first if the
// binary changed, unless HAFE_IMAGE_BUILD=0) on nw and removes it when the
// test ends.
func StartHafe(t testing.TB, nw *Network, cfg HafeConfig) *Hafe {
	t.Helper()
	RequireDocker(t)
	if cfg.Image == "" {
		ensureImage(t, HafeImage(), "build-hafe.sh", "HAFE_IMAGE_BUILD")
	}
	h, err := startHafe(t, nw, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// StartHafes starts n front-ends concurrently, the i-th (0-based) described
// by cfg(i).
func StartHafes(t testing.TB, nw *Network, n int, cfg func(i int) HafeConfig) []*Hafe {
	t.Helper()
	RequireDocker(t)
	cfgs := make([]HafeConfig, n)
	for i := range n {
		cfgs[i] = cfg(i)
		if cfgs[i].Image == "" {
			ensureImage(t, HafeImage(), "build-hafe.sh", "HAFE_IMAGE_BUILD")
		}
	}
	hs := make([]*Hafe, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { hs[i], errs[i] = startHafe(t, nw, cfgs[i]) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return hs
}

// startHafe starts the container and registers its removal; it does not
// call t.Fatal, so it may run off the test's goroutine.
func startHafe(t testing.TB, nw *Network, cfg HafeConfig) (*Hafe, error) {
	if cfg.Image == "" {
		cfg.Image = HafeImage()
	}
	if cfg.Alias == "" {
		cfg.Alias = "hafe"
	}
	if cfg.ReadyPath == "" {
		cfg.ReadyPath = "/healthz"
	}
	if cfg.StartupTimeout == 0 {
		cfg.StartupTimeout = time.Minute
	}

	var ready wait.Strategy
	if cfg.ReadyPath == "-" {
		// The image has no shell for the in-container port check.
		ready = wait.ForListeningPort(HafePort).SkipInternalCheck()
	} else {
		ready = wait.ForHTTP(cfg.ReadyPath).WithPort(HafePort).WithPollInterval(100 * time.Millisecond)
	}
	opts := []testcontainers.ContainerCustomizer{
		testcontainers.WithExposedPorts(HafePort),
		testcontainers.WithCmd(cfg.Args...),
		testcontainers.WithEnv(cfg.Env),
		testcontainers.WithLabels(map[string]string{"dev.hafe.test": t.Name()}),
		testcontainers.WithLogger(tclog.TestLogger(t)),
		testcontainers.WithWaitStrategyAndDeadline(cfg.StartupTimeout, ready),
	}
	if nw != nil {
		opts = append(opts, tcnetwork.WithNetwork([]string{cfg.Alias}, &testcontainers.DockerNetwork{Name: nw.Name, ID: nw.ID}),
			tcnetwork.WithBridgeNetwork())
	}

	ctx, cancel := context.WithTimeout(context.Background(), cfg.StartupTimeout+time.Minute)
	defer cancel()
	start := time.Now()
	ctr, err := runPinned(HafePort, func(publish testcontainers.ContainerCustomizer) (*testcontainers.DockerContainer, error) {
		return testcontainers.Run(ctx, cfg.Image, append(opts, publish)...)
	})
	h := &Hafe{Config: cfg, NetworkURL: "http://" + cfg.Alias + ":8080"}
	if !isNilContainer(ctr) {
		h.Container = &Container{Alias: cfg.Alias, tc: ctr, net: nw, portsChanged: h.refreshURL}
		terminateOnCleanup(t, h.Container)
	}
	if err != nil {
		return nil, fmt.Errorf("start hafe %s (%s %v): %w", cfg.Alias, cfg.Image, cfg.Args, err)
	}
	if err := h.refreshURL(ctx); err != nil {
		return nil, err
	}
	t.Logf("hafe %s up in %s: %s (in network: %s)", cfg.Alias, time.Since(start).Round(time.Millisecond), h.URL, h.NetworkURL)
	return h, nil
}

func (h *Hafe) refreshURL(ctx context.Context) error {
	u, err := h.tc.PortEndpoint(ctx, HafePort, "http")
	if err != nil {
		return err
	}
	h.URL = loopback(u)
	return nil
}

// RunHafe runs a one-shot hafe command (e.g. "db", "install", "--db",
// pg.NetworkURL) in a container on nw and returns its exit code and output.
// The container is removed before it returns.
func RunHafe(t testing.TB, nw *Network, timeout time.Duration, args ...string) (int, string) {
	t.Helper()
	RequireDocker(t)
	ensureImage(t, HafeImage(), "build-hafe.sh", "HAFE_IMAGE_BUILD")
	return RunImage(t, nw, HafeImage(), timeout, args...)
}

// RunImage runs image with args (after its entrypoint) to completion on nw
// (nil: the default network) and returns its exit code and output. The
// container is removed before it returns.
func RunImage(t testing.TB, nw *Network, image string, timeout time.Duration, args ...string) (int, string) {
	t.Helper()
	RequireDocker(t)
	opts := []testcontainers.ContainerCustomizer{
		testcontainers.WithCmd(args...),
		testcontainers.WithLabels(map[string]string{"dev.hafe.test": t.Name()}),
		testcontainers.WithLogger(tclog.TestLogger(t)),
		testcontainers.WithWaitStrategyAndDeadline(timeout, wait.ForExit().WithExitTimeout(timeout)),
	}
	if nw != nil {
		opts = append(opts, tcnetwork.WithNetwork(nil, &testcontainers.DockerNetwork{Name: nw.Name, ID: nw.ID}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout+time.Minute)
	defer cancel()
	ctr, err := testcontainers.Run(ctx, image, opts...)
	defer func() {
		if ctr != nil {
			ctx, cancel := cleanupContext()
			defer cancel()
			if err := ctr.Terminate(ctx, testcontainers.StopTimeout(0)); err != nil {
				t.Errorf("remove container of hafe %v: %v", args, err)
			}
		}
	}()
	if err != nil {
		t.Fatalf("run hafe %v: %v", args, err)
	}
	c := &Container{Alias: "hafe-run", tc: ctr}
	out, err := c.Logs(ctx)
	if err != nil {
		t.Fatalf("logs of hafe %v: %v", args, err)
	}
	st, err := ctr.State(ctx)
	if err != nil {
		t.Fatalf("state of hafe %v: %v", args, err)
	}
	return st.ExitCode, out
}
