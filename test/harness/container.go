package harness

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tcnetwork "github.com/testcontainers/testcontainers-go/network"
)

// Network is a Docker network created for one test; containers on it reach
// each other by their aliases. It is removed when the test ends.
type Network struct {
	Name string
	ID   string
}

// NewNetwork creates a bridge network for the test and removes it in
// t.Cleanup, after the containers started later are gone.
func NewNetwork(t testing.TB) *Network {
	t.Helper()
	RequireDocker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	nw, err := tcnetwork.New(ctx, tcnetwork.WithLabels(map[string]string{"dev.hafe.test": t.Name()}))
	if err != nil {
		t.Fatalf("create docker network: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := cleanupContext()
		defer cancel()
		if err := nw.Remove(ctx); err != nil {
			t.Errorf("remove docker network %s: %v", nw.Name, err)
		}
	})
	return &Network{Name: nw.Name, ID: nw.ID}
}

// Container is a handle on a running test container for injecting faults.
// Its methods act on the Docker container directly, as an operator (or a
// crash) would.
type Container struct {
	// Alias is the container's DNS name on the test network.
	Alias string

	tc  testcontainers.Container
	net *Network
}

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
func (c *Container) Start(ctx context.Context) error { return c.tc.Start(ctx) }

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
// the other containers nor they it. Its host-side published port goes through
// the same network, so the test process loses it too. Reconnect undoes it.
func (c *Container) Disconnect(ctx context.Context) error {
	cli, err := dockerClient()
	if err != nil {
		return err
	}
	_, err = cli.NetworkDisconnect(ctx, c.net.ID, client.NetworkDisconnectOptions{Container: c.ID(), Force: true})
	if err != nil {
		return fmt.Errorf("disconnect %s from network %s: %w", c.Alias, c.net.Name, err)
	}
	return nil
}

// Reconnect attaches the container to the test network again, under its
// alias.
func (c *Container) Reconnect(ctx context.Context) error {
	cli, err := dockerClient()
	if err != nil {
		return err
	}
	_, err = cli.NetworkConnect(ctx, c.net.ID, client.NetworkConnectOptions{
		Container:      c.ID(),
		EndpointConfig: &network.EndpointSettings{Aliases: []string{c.Alias}},
	})
	if err != nil {
		return fmt.Errorf("reconnect %s to network %s: %w", c.Alias, c.net.Name, err)
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
