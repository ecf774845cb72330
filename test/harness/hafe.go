package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	tcnetwork "github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"
)

// HafePort is the port hafe listens on inside its container.
const HafePort = "8080/tcp"

// MTCPPort is the port a front-end started with HafeConfig.MTCP serves
// Migratory TCP on inside its container.
const MTCPPort = "7000/tcp"

// mtcpKeyPath is where the cluster key file goes in the container (the
// image is FROM scratch: /tmp is its one writable directory).
const mtcpKeyPath = "/tmp/hafe-cluster.key"

// MTCPConfig turns on a front-end's Migratory TCP listener: the harness adds
// --mtcp-listen :7000 --mtcp-advertise ALIAS:7000 --cluster-key-file and
// --mtcp-mode to its Args, copies the key file in and publishes the port.
//
// The address a front-end advertises is ALIAS:7000, its name on the test
// network: the other front-ends reach it there directly (peer channel,
// state handover), and it is what every front-end puts in the server list
// its MTCP clients receive. The test process is not on that network, so a
// client there must map those names to the published host ports with
// Hafe.DialMTCP as its mtcp.Dialer.DialPath (see MTCPDialPath). The other
// way round — advertising the published host port — would leave the
// front-ends unable to reach each other, since 127.0.0.1 inside a container
// is the container itself.
type MTCPConfig struct {
	// Mode is --mtcp-mode: "eager" (default) or "lazy".
	Mode string
	// Key is the cluster key; default DefaultClusterKey. Every front-end of
	// one cluster needs the same.
	Key []byte
}

// DefaultClusterKey is MTCPConfig.Key's default.
var DefaultClusterKey = []byte("hafe test cluster key: 32+ bytes of it")

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
	// MTCP, when set, serves Migratory TCP too (see MTCPConfig).
	MTCP *MTCPConfig
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
	// MTCPAddr is the MTCP address it advertises (with HafeConfig.MTCP),
	// e.g. fe1:7000: the other front-ends reach it there, and clients get
	// it in their server lists. The test process reaches it through
	// DialMTCP.
	MTCPAddr string

	mtcpHost atomic.Pointer[string] // the published MTCP port, 127.0.0.1:PORT
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
	ports := []string{HafePort}
	args := cfg.Args
	var files []testcontainers.ContainerFile
	if m := cfg.MTCP; m != nil {
		mode, key := m.Mode, m.Key
		if mode == "" {
			mode = "eager"
		}
		if key == nil {
			key = DefaultClusterKey
		}
		keyFile := filepath.Join(t.TempDir(), "cluster.key")
		if err := os.WriteFile(keyFile, key, 0o600); err != nil {
			return nil, err
		}
		files = append(files, testcontainers.ContainerFile{HostFilePath: keyFile, ContainerFilePath: mtcpKeyPath, FileMode: 0o644})
		ports = append(ports, MTCPPort)
		args = append(slices.Clone(args), "--mtcp-listen", ":7000", "--mtcp-advertise", cfg.Alias+":7000",
			"--cluster-key-file", mtcpKeyPath, "--mtcp-mode", mode)
	}
	opts := []testcontainers.ContainerCustomizer{
		testcontainers.WithExposedPorts(ports...),
		testcontainers.WithCmd(args...),
		testcontainers.WithFiles(files...),
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
	ctr, err := runPinned(ports, func(publish testcontainers.ContainerCustomizer) (*testcontainers.DockerContainer, error) {
		return testcontainers.Run(ctx, cfg.Image, append(opts, publish)...)
	})
	h := &Hafe{Config: cfg, NetworkURL: "http://" + cfg.Alias + ":8080"}
	if cfg.MTCP != nil {
		h.MTCPAddr = cfg.Alias + ":7000"
	}
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
	mtcpInfo := ""
	if h.MTCPAddr != "" {
		mtcpInfo = fmt.Sprintf("; mtcp %s (%s), at %s from here", h.MTCPAddr, cfg.MTCP.Mode, h.MTCPHostAddr())
	}
	t.Logf("hafe %s up in %s: %s (in network: %s)%s", cfg.Alias, time.Since(start).Round(time.Millisecond), h.URL, h.NetworkURL, mtcpInfo)
	return h, nil
}

func (h *Hafe) refreshURL(ctx context.Context) error {
	u, err := h.tc.PortEndpoint(ctx, HafePort, "http")
	if err != nil {
		return err
	}
	h.URL = loopback(u)
	if h.MTCPAddr != "" {
		u, err := h.tc.PortEndpoint(ctx, MTCPPort, "tcp")
		if err != nil {
			return err
		}
		hp := strings.TrimPrefix(loopback(u), "tcp://")
		h.mtcpHost.Store(&hp)
	}
	return nil
}

// MTCPHostAddr is where the test process reaches the front-end's MTCP
// listener: its published port, e.g. 127.0.0.1:23456 ("" without MTCP).
// Start and Rejoin update it if the port changed (it does not where ports
// are pinned).
func (h *Hafe) MTCPHostAddr() string {
	if p := h.mtcpHost.Load(); p != nil {
		return *p
	}
	return ""
}

// MTCPDialPath is an mtcp.Dialer.DialPath for a client in the test
// process: it dials the published port of the front-end among fes whose
// advertised address (MTCPAddr, which the front-ends put in the client's
// server list) is addr, looked up at each dial so that a restarted
// front-end is found where it is now. Any other address is an error, so a
// client never silently reaches something else.
func MTCPDialPath(fes ...*Hafe) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		for _, h := range fes {
			if h.MTCPAddr == addr {
				hp := h.MTCPHostAddr()
				if hp == "" {
					return nil, fmt.Errorf("front-end %s has no published MTCP port", h.Alias)
				}
				d := net.Dialer{KeepAlive: -1} // MTCP pings on its own
				return d.DialContext(ctx, "tcp", hp)
			}
		}
		return nil, fmt.Errorf("no test front-end advertises %s", addr)
	}
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
