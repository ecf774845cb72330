//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"hafe.dev/hafe/mtcp"
)

// The TUN-mode tests run hafe agent --tun inside a network namespace of
// their own, joined to this one by a veth pair with a private /30: the
// front-ends listen for MTCP on this side's address, the agent and the
// applications run on the other side and reach the service address
// tunService through the agent's device.
const (
	tunService = "10.77.0.1:80"
	tunDevice  = "hafetun0"
)

// testNetns is a network namespace and the veth pair to it.
type testNetns struct {
	name     string
	hostAddr string // this namespace's end of the veth pair
	nsAddr   string // the namespace's end
}

// exec returns argv run inside the namespace.
func (n *testNetns) exec(argv ...string) []string {
	return append([]string{"ip", "netns", "exec", n.name}, argv...)
}

// requireTUN skips a test that cannot create TUN devices and namespaces.
func requireTUN(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("TUN mode needs root (CAP_NET_ADMIN) to create the namespace, the veth pair and the device: run the tests as root")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("TUN mode needs /dev/net/tun: %v (modprobe tun; in a container, --device /dev/net/tun)", err)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("the TUN-mode tests need the ip command (iproute2) to set up a network namespace")
	}
}

func ipCmd(t *testing.T, argv ...string) {
	t.Helper()
	if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
}

// newTestNetns creates a namespace hafe-tun-<random> with its loopback up
// and a veth pair to it on a free 10.200.x.y/30; Cleanup deletes both.
func newTestNetns(t *testing.T) *testNetns {
	t.Helper()
	requireTUN(t)
	var rnd [4]byte
	rand.Read(rnd[:])
	id := hex.EncodeToString(rnd[:3])
	n := &testNetns{name: "hafe-tun-" + id}
	hostIf, nsIf := "htun"+id+"h", "htun"+id+"n"
	// A /30 no interface of this host is on.
	used := map[netip.Addr]bool{}
	if ifas, err := net.InterfaceAddrs(); err == nil {
		for _, ifa := range ifas {
			if p, err := netip.ParsePrefix(ifa.String()); err == nil {
				used[p.Masked().Addr()] = true
				used[p.Addr()] = true
			}
		}
	}
	for i := 0; ; i++ {
		base := netip.AddrFrom4([4]byte{10, 200, rnd[3] + byte(i), byte(4 * (int(rnd[0]+byte(i)) % 64))})
		h, ns := base.Next(), base.Next().Next()
		if !used[base] && !used[h] && !used[ns] {
			n.hostAddr, n.nsAddr = h.String(), ns.String()
			break
		}
	}
	ipCmd(t, "ip", "netns", "add", n.name)
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", hostIf).Run()
		if out, err := exec.Command("ip", "netns", "del", n.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", n.name, err, out)
		}
	})
	ipCmd(t, n.exec("ip", "link", "set", "lo", "up")...)
	ipCmd(t, "ip", "link", "add", hostIf, "type", "veth", "peer", "name", nsIf, "netns", n.name)
	ipCmd(t, "ip", "addr", "add", n.hostAddr+"/30", "dev", hostIf)
	ipCmd(t, "ip", "link", "set", hostIf, "up")
	ipCmd(t, n.exec("ip", "addr", "add", n.nsAddr+"/30", "dev", nsIf)...)
	ipCmd(t, n.exec("ip", "link", "set", nsIf, "up")...)
	return n
}

// startTUNCluster starts n front-ends serving MTCP on the veth's host
// address and hafe agent --tun in ns, its metrics on the namespace's
// veth address.
func startTUNCluster(t *testing.T, ns *testNetns, n int, agentArgs ...string) *agentCluster {
	t.Helper()
	ac := startFrontEnds(t, n, ns.hostAddr)
	ac.agentAddr = tunService
	ac.metrics = net.JoinHostPort(ns.nsAddr, "9108")
	ac.startAgent(t, ns.exec(), append([]string{"--tun", tunDevice, "--service", tunService, "--servers", ac.mtcp[0],
		"--metrics-listen", ac.metrics, "--path-timeout", "1s"}, agentArgs...)...)
	return ac
}

// goIn is Go's net/http with its defaults but for its dialer, which
// opens its sockets in the namespace ns. Like http.DefaultClient, its
// requests share one pool of keep-alive connections.
func goIn(ns *testNetns) agentClient {
	tr := &http.Transport{DialContext: ns.dial}
	hc := &http.Client{Transport: tr}
	return func(t *testing.T, addr string, body []byte) streamed {
		t.Cleanup(tr.CloseIdleConnections)
		resp, err := hc.Post("http://"+addr+"/v1/batches", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		return streamed{status: resp.StatusCode, frontEnd: resp.Header.Get("Hafe-Front-End"), body: bufio.NewReader(resp.Body),
			wait: func() error { return resp.Body.Close() }}
	}
}

// dial connects from inside the namespace: a socket belongs to the
// namespace of the thread that creates it, and stays there.
func (n *testNetns) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			done <- result{nil, err}
			return
		}
		defer orig.Close()
		target, err := os.Open("/run/netns/" + n.name)
		if err != nil {
			done <- result{nil, err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- result{nil, err}
			return
		}
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		// A thread that cannot go back stays locked, and ends with
		// this goroutine.
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		done <- result{c, err}
	}()
	r := <-done
	return r.c, r.err
}

// TestUnchangedClientsThroughTUNModeSurviveAKill: hafe agent --tun in a
// network namespace; curl -N, Python's http.client and Go's net/http in
// that namespace send a batch to the plain address 10.77.0.1:80, which
// the agent's device takes; in the middle the front-end serving it is
// SIGKILLed. The response goes on from the other front-end, byte for byte
// a fault-free run's, and the database shows every slot once.
func TestUnchangedClientsThroughTUNModeSurviveAKill(t *testing.T) {
	requireTUN(t)
	for _, tc := range []struct {
		name   string
		needs  string
		client func(*testNetns) agentClient
	}{
		{"curl", "curl", func(n *testNetns) agentClient { return curlIn(n.exec()...) }},
		{"python", "python3", func(n *testNetns) agentClient { return pythonIn(n.exec()...) }},
		{"go", "", goIn},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.needs != "" {
				if _, err := exec.LookPath(tc.needs); err != nil {
					t.Skipf("%s is not installed: this client's run needs it", tc.needs)
				}
			}
			ns := newTestNetns(t)
			ac := startTUNCluster(t, ns, 2)
			runThroughAgent(t, ac, tc.name+" via TUN", tc.client(ns), "kill")
			if log := ac.agentLog.String(); !strings.Contains(log, "client="+ns.nsAddr+":") {
				t.Errorf("the agent's log names no client at %s (the application's address as the netstack sees it):\n%s", ns.nsAddr, log)
			}
		})
	}
}

// TestTUNModeRemovesItsDeviceAndRoutesOnExit: once hafe agent --tun ends,
// by SIGTERM or SIGKILL, its device and the routes to the service
// addresses (IPv4 and IPv6) are gone; after a SIGTERM the agent says so
// and exits 0. --listen opens beside the device only when given.
func TestTUNModeRemovesItsDeviceAndRoutesOnExit(t *testing.T) {
	ns := newTestNetns(t)
	bin := buildHafe(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			var log lockedBuffer
			argv := ns.exec(bin, "agent", "--tun", tunDevice, "--service", tunService, "--service", "[fd77::1]:80",
				"--servers", ns.hostAddr+":1")
			// With --tun, --listen opens only when given: here with
			// SIGTERM, not with SIGKILL.
			withListen := sig == syscall.SIGTERM
			if withListen {
				argv = append(argv, "--listen", "127.0.0.1:0")
			}
			cmd := exec.Command(argv[0], argv[1:]...)
			cmd.Stdout, cmd.Stderr = &log, &log
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			t.Cleanup(func() { cmd.Process.Kill(); <-exited })
			for deadline := time.Now().Add(10 * time.Second); !tunPresent(t, ns); time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("no device %s with a route to the services after 10s:\n%s", tunDevice, log.String())
				}
			}
			if got := strings.Contains(log.String(), "agent listening"); got != withListen {
				t.Errorf("--listen given: %v; the agent listening on it: %v\n%s", withListen, got, log.String())
			}
			start := time.Now()
			cmd.Process.Signal(sig)
			var err error
			select {
			case err = <-exited:
				exited <- err // for Cleanup
			case <-time.After(10 * time.Second):
				t.Fatalf("the agent did not exit 10s after %v:\n%s", sig, log.String())
			}
			if sig == syscall.SIGTERM && err != nil {
				t.Errorf("after SIGTERM: %v\n%s", err, log.String())
			}
			if tunLeft(t, ns) {
				t.Fatalf("after %v the device or a route to it is still there:\n%s", sig, log.String())
			}
			t.Logf("%v: agent gone, device and routes gone, %v after the signal", sig, time.Since(start).Round(time.Millisecond))
			if sig == syscall.SIGTERM && !strings.Contains(log.String(), "TUN device closed") {
				t.Errorf("the agent did not log closing its device:\n%s", log.String())
			}
		})
	}
}

// tunPresent tells whether the agent's device is up with the routes to
// both services.
func tunPresent(t *testing.T, ns *testNetns) bool {
	out4, _ := exec.Command("ip", "netns", "exec", ns.name, "ip", "-4", "route", "show", "dev", tunDevice).CombinedOutput()
	out6, _ := exec.Command("ip", "netns", "exec", ns.name, "ip", "-6", "route", "show", "dev", tunDevice).CombinedOutput()
	return strings.Contains(string(out4), "10.77.0.1") && strings.Contains(string(out6), "fd77::1")
}

// tunLeft tells whether the device or a route to a service is left.
func tunLeft(t *testing.T, ns *testNetns) bool {
	if exec.Command("ip", "netns", "exec", ns.name, "ip", "link", "show", tunDevice).Run() == nil {
		return true
	}
	out, err := exec.Command("ip", "netns", "exec", ns.name, "sh", "-c", "ip -4 route show; ip -6 route show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip route: %v: %s", err, out)
	}
	return strings.Contains(string(out), "10.77.0.1") || strings.Contains(string(out), "fd77::1") || strings.Contains(string(out), tunDevice)
}

// TestTUNModeErrorsSayWhatIsWrong: hafe agent --tun refuses, with a
// message naming the cause and leaving no device behind, a device name in
// use, a service address that already has a route, a service address of
// the host itself, a user without CAP_NET_ADMIN and a system without
// /dev/net/tun.
func TestTUNModeErrorsSayWhatIsWrong(t *testing.T) {
	ns := newTestNetns(t)
	bin := buildHafe(t)
	ipCmd(t, ns.exec("ip", "route", "add", "10.77.0.9/32", "via", ns.hostAddr)...)
	// Run the agent as nobody, with no capabilities (ip netns exec
	// itself needs root).
	asNobody := []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--"}
	// Hide /dev/net/tun from the agent alone, in a mount namespace of
	// its own.
	noTUN := []string{"unshare", "--mount", "--propagation", "private", "sh", "-c", `mount -t tmpfs none /dev/net && exec "$@"`, "sh"}
	for _, tc := range []struct {
		name   string
		args   []string
		prefix []string // run the agent through this, inside the namespace
		want   string
	}{
		{"name taken", []string{"--tun", "lo", "--service", tunService}, nil, `tun: create device "lo": a network interface of that name exists already`},
		{"route exists", []string{"--tun", tunDevice, "--service", "10.77.0.9:80"}, nil, "route 10.77.0.9 to \"" + tunDevice + "\": a route to that address exists already"},
		{"host address", []string{"--tun", tunDevice, "--service", ns.nsAddr + ":80"}, nil, "is an address of this host"},
		{"not root", []string{"--tun", tunDevice, "--service", tunService}, asNobody, "needs root or CAP_NET_ADMIN"},
		{"no /dev/net/tun", []string{"--tun", tunDevice, "--service", tunService}, noTUN, "no /dev/net/tun: load the tun module"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.prefix) > 0 {
				if _, err := exec.LookPath(tc.prefix[0]); err != nil {
					t.Skipf("%s is not installed: this case needs it", tc.prefix[0])
				}
			}
			argv := ns.exec(append(append(append([]string(nil), tc.prefix...), bin, "agent", "--servers", ns.hostAddr+":1"), tc.args...)...)
			cmd := exec.Command(argv[0], argv[1:]...)
			done := make(chan struct{})
			var out []byte
			var err error
			go func() { out, err = cmd.CombinedOutput(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Fatalf("the agent ran on:\n%s", out)
			}
			if err == nil || !strings.Contains(string(out), tc.want) {
				t.Errorf("%v: %s\nwant an error with %q", err, out, tc.want)
			}
			t.Logf("%s", strings.TrimSpace(string(out)))
			if exec.Command("ip", "netns", "exec", ns.name, "ip", "link", "show", tunDevice).Run() == nil {
				t.Errorf("device %s left behind", tunDevice)
			}
		})
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Fatalf("/dev/net/tun is gone from this mount namespace: %v", err)
	}
}

// TestAgentTUNBenchmark compares small batches sent by Go's net/http
// through hafe agent in TUN mode (the client in the namespace, talking to
// the service address) with the same client through the agent's local
// listener and straight to the front-end (plain HTTP, and over MTCP with
// the mtcp package), side by side in one run. The front-end serves MTCP
// on the veth's address here, so the TUN mode's MTCP hop crosses the
// veth pair. Set HAFE_AGENT_BENCH=1 to run it (HAFE_AGENT_BENCH_N:
// requests per connection, default 300).
func TestAgentTUNBenchmark(t *testing.T) {
	if os.Getenv("HAFE_AGENT_BENCH") == "" {
		t.Skip("set HAFE_AGENT_BENCH=1 to run the agent's benchmark")
	}
	n := 300
	if v, err := strconv.Atoi(os.Getenv("HAFE_AGENT_BENCH_N")); err == nil && v > 0 {
		n = v
	}
	ns := newTestNetns(t)
	ac := startTUNCluster(t, ns, 1)
	tunAddr := ac.agentAddr
	listenAddr := freeAddr(t)
	ac.metrics = freeAddr(t)
	ac.startAgent(t, nil, "--listen", listenAddr, "--servers", ac.mtcp[0], "--metrics-listen", ac.metrics, "--path-timeout", "1s")
	plain := &http.Transport{MaxIdleConnsPerHost: 64}
	d := &mtcp.Dialer{Servers: ac.mtcp, Limits: mtcp.Limits{MaxSendBuffer: 16 << 20}}
	viaMTCP := &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 64}
	inNS := &http.Transport{DialContext: ns.dial, MaxIdleConnsPerHost: 64}
	defer plain.CloseIdleConnections()
	defer viaMTCP.CloseIdleConnections()
	defer inNS.CloseIdleConnections()
	ways := []benchWay{
		{"plain HTTP to the front-end", "http://" + ac.http[0], plain},
		{"Go client over MTCP (mtcp package)", "http://" + ac.mtcp[0], viaMTCP},
		{"hafe agent --listen (loopback)", "http://" + listenAddr, plain},
		{"hafe agent --tun (service address)", "http://" + tunAddr, inNS},
	}
	results := measureBatches(t, n, ways)
	t.Logf("small batches (2 transactions), %d per connection, one front-end (eager MTCP):", n)
	logBenchTable(t, ways, results)
	lis, tun := results[ways[2].name], results[ways[3].name]
	t.Logf("TUN mode against the listener: %.2f× the throughput, %+v at the median", tun.rate/lis.rate, (tun.p50 - lis.p50).Round(time.Microsecond))
}

// TestAgentTUNFailoverStall is TestAgentFailoverStall through TUN mode
// and through the listener side by side: curl -N (in the namespace, to
// the service address; or to --listen), the serving front-end SIGKILLed
// at line 200 of 2000, HAFE_AGENT_BENCH_KILLS runs of each (default 10),
// alternating, each on a fresh cluster. Set HAFE_AGENT_BENCH=1 to run it.
func TestAgentTUNFailoverStall(t *testing.T) {
	if os.Getenv("HAFE_AGENT_BENCH") == "" {
		t.Skip("set HAFE_AGENT_BENCH=1 to run the agent's benchmark")
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed")
	}
	requireTUN(t)
	runs := 10
	if v, err := strconv.Atoi(os.Getenv("HAFE_AGENT_BENCH_KILLS")); err == nil && v > 0 {
		runs = v
	}
	var tun, lis []time.Duration
	for run := range runs {
		t.Run("tun/"+strconv.Itoa(run), func(t *testing.T) {
			ns := newTestNetns(t)
			tun = append(tun, measureStall(t, run, startTUNCluster(t, ns, 2), curlIn(ns.exec()...)))
		})
		t.Run("listen/"+strconv.Itoa(run), func(t *testing.T) {
			lis = append(lis, measureStall(t, run, startAgentCluster(t, 2), curlClient))
		})
	}
	if len(tun) == runs && len(lis) == runs {
		logStalls(t, "curl -N through hafe agent --tun", tun)
		logStalls(t, "curl -N through hafe agent --listen", lis)
	}
}
