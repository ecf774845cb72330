//go:build linux

package agent

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"hafe.dev/hafe/agent/tunnet"
)

// TestIdleTUNConnectionMemory is TestIdleConnectionMemory in TUN mode:
// what an idle connection relayed from a TUN device costs the agent,
// netstack endpoint included. The device lives in a network namespace
// the test creates; the clients (the child process) dial the service
// address from inside it. Needs root.
func TestIdleTUNConnectionMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("measures memory over 2000 connections")
	}
	if os.Geteuid() != 0 {
		t.Skip("TUN mode needs root (CAP_NET_ADMIN)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("TUN mode needs /dev/net/tun: %v", err)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs the ip command (iproute2) for a network namespace")
	}
	const n = 2000
	var rnd [3]byte
	rand.Read(rnd[:])
	ns := "hafe-tun-" + hex.EncodeToString(rnd[:])
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	ip("-n", ns, "link", "set", "lo", "up")
	// The clients' source address: the namespace needs one besides
	// loopback (a veth pair inside it: no dummy module needed).
	ip("-n", ns, "link", "add", "src0", "type", "veth", "peer", "name", "src1")
	ip("-n", ns, "addr", "add", "10.201.0.1/32", "dev", "src0")
	ip("-n", ns, "link", "set", "src0", "up")
	ip("-n", ns, "link", "set", "src1", "up")

	child := exec.Command(os.Args[0], "-test.run=^TestMemoryChild$")
	child.Env = append(os.Environ(), "HAFE_AGENT_MEMORY_CHILD=1")
	in, _ := child.StdinPipe()
	outPipe, _ := child.StdoutPipe()
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { in.Close(); child.Process.Kill(); child.Wait() }()
	out := bufio.NewReader(outPipe)
	server, err := out.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	server = strings.TrimSpace(strings.TrimPrefix(server, "server "))

	var ifc *tunnet.Interface
	service := netip.MustParseAddrPort("10.77.0.1:80")
	if err := inNetns(ns, func() error {
		ifc, err = tunnet.Open(tunnet.Config{Name: "hafetun0", Services: []netip.AddrPort{service}})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ifc.Close()
	a, err := New(Config{Servers: []string{server}, Metrics: NewMetrics()})
	if err != nil {
		t.Fatal(err)
	}
	ln := ifc.Listener()
	go a.Serve(ln)
	defer func() {
		ln.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		a.Shutdown(ctx)
	}()

	before, hb, sb, g0 := inUseSplit()
	fmt.Fprintf(in, "%s %d %s\n", service, n, ns)
	if l, err := out.ReadString('\n'); err != nil || l != "ready\n" {
		t.Fatalf("child: %q, %v", l, err)
	}
	for deadline := time.Now().Add(5 * time.Second); a.Open() != n; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections relayed, want %d", a.Open(), n)
		}
	}
	time.Sleep(200 * time.Millisecond) // let the delayed acks go
	after, ha, sa, g1 := inUseSplit()
	t.Logf("heap %.1f KiB, stacks %.1f KiB, %.1f goroutines per connection", float64(ha-hb)/n/1024, float64(sa-sb)/n/1024, float64(g1-g0)/n)
	t.Logf("memory per idle relayed connection in the agent, TUN mode: %.1f KiB (heap and stacks, %d connections)", float64(after-before)/n/1024, n)
}

// inNetns runs f with the calling goroutine's thread in the network
// namespace ns: sockets and devices f creates belong to it. Goroutines f
// starts run on other threads, outside it.
func inNetns(ns string, f func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			done <- err
			return
		}
		defer orig.Close()
		target, err := os.Open("/run/netns/" + ns)
		if err != nil {
			done <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- err
			return
		}
		err = f()
		// A thread that cannot go back stays locked, and ends with
		// this goroutine.
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		done <- err
	}()
	return <-done
}

// dialInNetns connects to addr from inside the network namespace ns.
func dialInNetns(ns, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetns(ns, func() (err error) {
		c, err = net.Dial("tcp", addr)
		return err
	})
	return c, err
}
