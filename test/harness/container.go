package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net"
	"net/netip"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
)

// Network is a Docker network created for one test; containers on it reach
// each other by their aliases. It is removed when the test ends.
type Network struct {
	Name string
	ID   string
}

// NewNetwork creates a bridge network for the test and removes it in
// t.Cleanup, after the containers started later are gone.
//
// Its name starts with "hafe-" on purpose: a container on several networks
// publishes its ports through the one whose name sorts first, and that must
// be Docker's "bridge" (the client network), not the test network, so that
// Disconnect leaves the test process's path alone.
func NewNetwork(t testing.TB) *Network {
	t.Helper()
	RequireDocker(t)
	cli, err := dockerClient()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := networkName(t.Name())
	labels := testcontainers.GenericLabels()
	labels["dev.hafe.test"] = t.Name()
	res, err := cli.NetworkCreate(ctx, name, client.NetworkCreateOptions{Driver: "bridge", Labels: labels})
	if err != nil {
		t.Fatalf("create docker network %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := cleanupContext()
		defer cancel()
		if _, err := cli.NetworkRemove(ctx, res.ID, client.NetworkRemoveOptions{}); err != nil {
			t.Errorf("remove docker network %s: %v", name, err)
		}
	})
	return &Network{Name: name, ID: res.ID}
}

// networkName is "hafe-" + the test's name in characters Docker accepts +
// a random suffix, 60 characters at most.
func networkName(test string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(test) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	slug := b.String()
	if len(slug) > 40 {
		slug = slug[:40]
	}
	var suffix [4]byte
	rand.Read(suffix[:])
	return fmt.Sprintf("hafe-%s-%x", slug, suffix)
}

// Container is a handle on a running test container for injecting faults.
// Its methods act on the Docker container directly, as an operator (or a
// crash) would.
type Container struct {
	// Alias is the container's DNS name on the test network.
	Alias string

	tc  testcontainers.Container
	net *Network
	// portsChanged re-reads the owner's host URLs: published ports can change
	// when the container starts again or rejoins the client network.
	portsChanged func(context.Context) error
}

// clientNetwork carries the published ports the test process uses. Every
// container is on it besides the test network, so that cutting a container
// off the test network (Disconnect) leaves the test's own path to it alone.
// (Disconnecting only this one would not cut that path: Docker moves the
// published ports to the remaining network.)
const clientNetwork = "bridge"

// Testcontainer is the underlying testcontainers-go container.
func (c *Container) Testcontainer() testcontainers.Container { return c.tc }

// ID is the Docker container id.
func (c *Container) ID() string { return c.tc.GetContainerID() }

// Kill sends SIGKILL: the process dies at once, without any chance to clean
// up, like a crashed machine. Its TCP connections through the published port
// are reset. The container stays (stopped) until the test ends; Start brings
// it back.
func (c *Container) Kill(ctx context.Context) error { return c.Signal(ctx, "KILL") }

// Signal sends a signal (e.g. "TERM", "INT") to the container's main process.
func (c *Container) Signal(ctx context.Context, signal string) error {
	cli, err := dockerClient()
	if err != nil {
		return err
	}
	if _, err := cli.ContainerKill(ctx, c.ID(), client.ContainerKillOptions{Signal: signal}); err != nil {
		return fmt.Errorf("docker kill -s %s %s: %w", signal, c.Alias, err)
	}
	return nil
}

// Stop stops the container: SIGTERM (the image's stop signal), then SIGKILL
// after timeout.
func (c *Container) Stop(ctx context.Context, timeout time.Duration) error {
	return c.tc.Stop(ctx, &timeout)
}

// Start starts a stopped (or killed) container again and waits until it is
// ready as on first start. Published host ports may change: ask the owner
// (Postgres, Hafe) for URLs afterwards.
func (c *Container) Start(ctx context.Context) error {
	if err := c.tc.Start(ctx); err != nil {
		return err
	}
	return c.refreshPorts(ctx)
}

func (c *Container) refreshPorts(ctx context.Context) error {
	if c.portsChanged == nil {
		return nil
	}
	return c.portsChanged(ctx)
}

// Pause freezes every process in the container (cgroup freezer): connections
// stay open but nothing answers, like a stuck machine or a long GC pause.
func (c *Container) Pause(ctx context.Context) error {
	cli, err := dockerClient()
	if err != nil {
		return err
	}
	_, err = cli.ContainerPause(ctx, c.ID(), client.ContainerPauseOptions{})
	return err
}

// Unpause resumes a paused container.
func (c *Container) Unpause(ctx context.Context) error {
	cli, err := dockerClient()
	if err != nil {
		return err
	}
	_, err = cli.ContainerUnpause(ctx, c.ID(), client.ContainerUnpauseOptions{})
	return err
}

// Disconnect cuts the container off the test network: it can no longer reach
// the other containers nor they it (its alias stops resolving). The test
// process still reaches it on its URL. Reconnect undoes it.
func (c *Container) Disconnect(ctx context.Context) error {
	if c.net == nil {
		return fmt.Errorf("container %s was started without a test network", c.Alias)
	}
	return c.disconnect(ctx, c.net.ID, c.net.Name)
}

// Reconnect attaches the container to the test network again, under its
// alias.
func (c *Container) Reconnect(ctx context.Context) error {
	if c.net == nil {
		return fmt.Errorf("container %s was started without a test network", c.Alias)
	}
	return c.connect(ctx, c.net.ID, c.net.Name, []string{c.Alias})
}

// Isolate unplugs the container from every network: the other containers
// and the test process lose it alike. Docker unpublishes its ports, so the
// test's open connections to it are closed rather than left hanging (Pause
// gives the hanging kind). Rejoin undoes it.
func (c *Container) Isolate(ctx context.Context) error {
	if c.net != nil {
		if err := c.Disconnect(ctx); err != nil {
			return err
		}
	}
	return c.disconnect(ctx, clientNetwork, clientNetwork)
}

// Rejoin plugs an isolated container back into its networks. Its URL is the
// same where ports are pinned (see pinPorts), updated otherwise.
func (c *Container) Rejoin(ctx context.Context) error {
	if err := c.connect(ctx, clientNetwork, clientNetwork, nil); err != nil {
		return err
	}
	if c.net != nil {
		if err := c.Reconnect(ctx); err != nil {
			return err
		}
	}
	return c.refreshPorts(ctx)
}

func (c *Container) disconnect(ctx context.Context, networkID, name string) error {
	cli, err := dockerClient()
	if err != nil {
		return err
	}
	_, err = cli.NetworkDisconnect(ctx, networkID, client.NetworkDisconnectOptions{Container: c.ID(), Force: true})
	if err != nil {
		return fmt.Errorf("disconnect %s from network %s: %w", c.Alias, name, err)
	}
	return nil
}

func (c *Container) connect(ctx context.Context, networkID, name string, aliases []string) error {
	cli, err := dockerClient()
	if err != nil {
		return err
	}
	_, err = cli.NetworkConnect(ctx, networkID, client.NetworkConnectOptions{
		Container:      c.ID(),
		EndpointConfig: &network.EndpointSettings{Aliases: aliases},
	})
	if err != nil {
		return fmt.Errorf("connect %s to network %s: %w", c.Alias, name, err)
	}
	return nil
}

// Running reports whether the container's main process is running.
func (c *Container) Running(ctx context.Context) (bool, error) {
	st, err := c.tc.State(ctx)
	if err != nil {
		return false, err
	}
	return st.Running, nil
}

// Logs returns everything the container wrote to stdout and stderr so far.
func (c *Container) Logs(ctx context.Context) (string, error) {
	rc, err := c.tc.Logs(ctx)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	var b bytes.Buffer
	_, err = io.Copy(&b, rc)
	return b.String(), err
}

// terminateOnCleanup removes the container when the test ends, after logging
// the tail of its output if the test failed.
func terminateOnCleanup(t testing.TB, c *Container) {
	t.Cleanup(func() {
		ctx, cancel := cleanupContext()
		defer cancel()
		if t.Failed() {
			if logs, err := c.Logs(ctx); err == nil {
				t.Logf("---- last output of container %s (%.12s) ----\n%s", c.Alias, c.ID(), tail(logs, 60))
			}
		}
		if err := c.tc.Terminate(ctx, testcontainers.StopTimeout(0)); err != nil {
			t.Errorf("remove container %s: %v", c.Alias, err)
		}
	})
}

func tail(s string, lines int) string {
	all := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// loopback rewrites host "localhost" in u to 127.0.0.1: Docker may publish
// a container port on different host ports for IPv4 and IPv6, and the port
// testcontainers reports is the IPv4 one, so a resolver answering ::1 first
// could reach another container.
func loopback(u string) string {
	pu, err := url.Parse(u)
	if err != nil || pu.Hostname() != "localhost" {
		return u
	}
	pu.Host = net.JoinHostPort("127.0.0.1", pu.Port())
	return pu.String()
}

// Host ports are pinned: each container port is published on 127.0.0.1 on a
// port the harness picks, so that a container keeps its URL across Start and
// Rejoin (a client's list of front-ends stays valid) — Docker would
// allocate a new one each time. Ports come from below the kernel's and
// Docker's ephemeral range (32768 and up), so nothing else is handed them
// between the pick and the bind; a clash with another test process is
// retried.
const (
	pinnedPortMin   = 20000
	pinnedPortCount = 10000
	pinAttempts     = 5
)

// pinPorts reports whether ports are published on loopback and pinned: when
// the tests reach Docker's published ports on this machine.
func pinPorts() bool {
	switch os.Getenv("TESTCONTAINERS_HOST_OVERRIDE") {
	case "localhost", "127.0.0.1":
		return true
	}
	return false
}

func pickHostPort() (int, error) {
	for range 100 {
		p := pinnedPortMin + mathrand.IntN(pinnedPortCount)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		l.Close()
		return p, nil
	}
	return 0, fmt.Errorf("no free host port in %d-%d", pinnedPortMin, pinnedPortMin+pinnedPortCount-1)
}

// publishOn publishes each container port ("8080/tcp") on 127.0.0.1 at
// the host port of the same index. One binding per port, also because
// Docker otherwise allocates separate host ports for IPv4 and IPv6; and a
// test database with a known password is not offered to the whole network.
func publishOn(ports []string, hostPorts []int) testcontainers.CustomizeRequestOption {
	return testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
		if hc.PortBindings == nil {
			hc.PortBindings = network.PortMap{}
		}
		for i, port := range ports {
			hc.PortBindings[network.MustParsePort(port)] = []network.PortBinding{{
				HostIP:   netip.AddrFrom4([4]byte{127, 0, 0, 1}),
				HostPort: strconv.Itoa(hostPorts[i]),
			}}
		}
	})
}

// runPinned calls run with an option publishing each of ports on a pinned
// host port (or none, where ports are not pinned), again with other ports
// when one was taken meanwhile. A container left by a failed attempt is
// removed; the last attempt's container is returned with its error.
func runPinned[C testcontainers.Container](ports []string, run func(publish testcontainers.ContainerCustomizer) (C, error)) (C, error) {
	if !pinPorts() {
		return run(testcontainers.CustomizeRequestOption(func(*testcontainers.GenericContainerRequest) error { return nil }))
	}
	var (
		ctr C
		err error
	)
	for attempt := 1; ; attempt++ {
		hps := make([]int, 0, len(ports))
		for len(hps) < len(ports) {
			hp, perr := pickHostPort()
			if perr != nil {
				return ctr, perr
			}
			if !slices.Contains(hps, hp) {
				hps = append(hps, hp)
			}
		}
		ctr, err = run(publishOn(ports, hps))
		if err == nil || attempt == pinAttempts || !portTaken(err) {
			return ctr, err
		}
		if !isNilContainer(ctr) {
			ctx, cancel := cleanupContext()
			_ = ctr.Terminate(ctx, testcontainers.StopTimeout(0))
			cancel()
		}
	}
}

func portTaken(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "port is already allocated") || strings.Contains(msg, "address already in use")
}

func isNilContainer(c testcontainers.Container) bool {
	if c == nil {
		return true
	}
	v := reflect.ValueOf(c)
	return v.Kind() == reflect.Pointer && v.IsNil()
}
