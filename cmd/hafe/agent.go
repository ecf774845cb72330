package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"hafe.dev/hafe/agent"
	"hafe.dev/hafe/agent/tunnet"
	"hafe.dev/hafe/mtcp"
)

const agentAbout = `Carries plain HTTP clients (curl, Python, Java, a shell script: any
HTTP/1.1 client, unchanged) over Migratory TCP. Point the application at
--listen instead of a front-end; each connection it opens there rides its
own MTCP connection to one of the front-ends (hafe serve --mtcp-listen),
and when that front-end dies, drains or slows down, the connection moves
to another one in the middle of a batch: the response goes on byte for
byte, with no second request and no transaction run twice.

--servers only bootstraps: the agent follows the list the front-ends send.
Bytes are relayed unchanged both ways, with back-pressure and half-close;
a connection no front-end can take any more is reset, so the application
never takes a cut response for a whole one.

A front-end in eager mode (the default) acknowledges a request's bytes
only once it has answered it, so the agent holds each request whole:
--send-buffer must be at least the front-ends' --max-body-bytes plus the
headers, or larger uploads stall. It is allocated as bytes arrive.

Run it beside the application (same host, pod or compose project): the
local hop is plain TCP; the paths to the front-ends use TLS with --ca (or
--tls). The hafe image runs it too: its command is then
"agent --listen 0.0.0.0:8088 --servers ...". One log line per migration;
Prometheus metrics at /metrics on --metrics-listen.

TUN mode (Linux; needs root or CAP_NET_ADMIN, and /dev/net/tun): with
--tun NAME the agent creates the TUN device NAME, routes each --service
address to it (a /32 or /128 host route) and terminates the applications'
TCP connections to those addresses itself, in a userspace TCP/IP stack
(gVisor's netstack); each rides MTCP as above. The application then
talks to a plain address, e.g. http://10.77.0.1/v1/batches, with no proxy
settings. Pick service addresses the host does not use. On exit the
agent deletes the routes and the device; the device is not persistent,
so the kernel removes it (and its routes) even when the agent is killed.
With --tun, --listen opens only when given (or HAFE_LISTEN is set): the
two modes can run together.`

func runAgent(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("agent", "agent --listen 127.0.0.1:PORT --servers HOST:PORT[,...] [flags]\n       hafe agent --tun NAME --service ADDR:PORT [--service ...] --servers HOST:PORT[,...] [flags]   (root)", agentAbout, stderr)
	var servers stringList
	fs.Var(&servers, "servers", "the front-ends' MTCP addresses (their --mtcp-advertise), comma-separated or repeated; the agent learns the rest from them (required)")
	var services stringList
	fs.Var(&services, "service", "TUN mode: an address and port applications connect to, ADDR:PORT (IPv6: [ADDR]:PORT), comma-separated or repeated; each address is routed to the --tun device")
	var (
		listen        = fs.String("listen", "127.0.0.1:8088", "where the application connects: plain TCP (HTTP/1.1). With --tun, only when given")
		tunName       = fs.String("tun", "", "TUN mode: create the TUN device of this name (at most 15 bytes, must not exist) and take the --service addresses' connections from it. Needs root or CAP_NET_ADMIN, and /dev/net/tun")
		tunMTU        = fs.Int("tun-mtu", tunnet.DefaultMTU, "TUN mode: the device's MTU (its packets never leave the host, so large is cheap)")
		metricsListen = fs.String("metrics-listen", "", "serve /metrics (Prometheus) and /healthz here (empty: off)")
		pathTimeout   = fs.Duration("path-timeout", 5*time.Second, "a path to a front-end on which nothing arrives for this long (despite pings every --keepalive) has failed: the connection moves. A killed front-end's paths fail at once; this catches silent ones (a cut network)")
		keepAlive     = fs.Duration("keepalive", time.Second, "ping a silent path this often")
		rate          = fs.Float64("rate-threshold", 0, "move a connection whose smoothed download rate falls below this fraction of its peak on the current front-end, e.g. 0.75 (0: off). For long streaming responses; an idle keep-alive connection is slow too, and would move")
		standby       = fs.Bool("standby", false, "keep a warm path to the next front-end, so a move needs no TCP handshake (one more idle TCP connection per relayed connection)")
		prepareMinRTT = fs.Duration("prepare-min-rtt", 100*time.Microsecond, "ask the old front-end to push the state to the new one during the dial when the path's round trip is at least this (negative: always; the push saves the new front-end a round trip to the old one)")
		sendBuffer    = fs.Int("send-buffer", agent.DefaultSendBuffer, "bytes of a connection's upload held until a front-end acknowledges them: at least the front-ends' --max-body-bytes plus headers (see above)")
		dialTimeout   = fs.Duration("dial-timeout", 10*time.Second, "longest a new connection waits for a front-end; then it is reset")
		recover       = fs.Duration("recover-timeout", 30*time.Second, "how long a connection whose front-end is gone keeps trying the others before it is reset")
		shutdown      = fs.Duration("shutdown-timeout", 30*time.Second, "on SIGTERM or SIGINT, how long relayed connections may go on before they are reset")
		ca            = fs.String("ca", "", "PEM CA certificate(s) the front-ends' TLS certificates (their --tls-cert) are checked against: the MTCP paths to the front-ends use TLS (front-ends with --tls-cert need it)")
		useTLS        = fs.Bool("tls", false, "MTCP paths use TLS, with certificates checked against the system's CAs (implied by --ca)")
		logLevel      = fs.String("log-level", "info", "debug, info, warn or error")
		logFormat     = fs.String("log-format", "text", "log lines as text (key=value) or json")
	)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{cmd: "agent", err: fmt.Errorf("unexpected arguments %q", fs.Args())}
	}
	if len(servers) == 0 {
		return usageError{cmd: "agent", err: errors.New("--servers is required: the front-ends' MTCP addresses, e.g. --servers 10.0.0.7:7070,10.0.0.8:7070")}
	}
	if *rate < 0 || *rate >= 1 {
		return usageError{cmd: "agent", err: fmt.Errorf("--rate-threshold %v: want a fraction from 0 (off) to below 1", *rate)}
	}
	if *sendBuffer < 64<<10 {
		return usageError{cmd: "agent", err: fmt.Errorf("--send-buffer %d: want at least 65536", *sendBuffer)}
	}
	tcfg, listenToo, err := tunConfig(fs, *tunName, *tunMTU, services)
	if err != nil {
		return usageError{cmd: "agent", err: err}
	}
	log, err := newLogger(stderr, *logLevel, *logFormat)
	if err != nil {
		return usageError{cmd: "agent", err: err}
	}
	d := mtcp.Dialer{
		Triggers:         mtcp.Triggers{KeepAlive: *keepAlive, PathTimeout: *pathTimeout},
		Standby:          *standby,
		PrepareMinRTT:    *prepareMinRTT,
		Limits:           mtcp.Limits{MaxSendBuffer: *sendBuffer},
		HandshakeTimeout: *dialTimeout,
		RecoverTimeout:   *recover,
	}
	if d.TLSConfig, err = clientTLSConfig(*ca); err != nil {
		return usageError{cmd: "agent", err: err}
	}
	if *useTLS && d.TLSConfig == nil {
		d.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if *prepareMinRTT == 0 {
		d.PrepareMinRTT = -1 // 0 means the default to the Dialer
	}
	if *rate > 0 {
		d.Triggers.Rate = &mtcp.RatePolicy{Fraction: *rate}
	}
	metrics := agent.NewMetrics()
	a, err := agent.New(agent.Config{Servers: servers, Dialer: d, DialTimeout: *dialTimeout, Logger: log, Metrics: metrics})
	if err != nil {
		return usageError{cmd: "agent", err: err}
	}
	var lns []net.Listener // what the agent serves: --listen, the TUN device's services
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	if tcfg.Name == "" || listenToo {
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			return fmt.Errorf("--listen: %w", err)
		}
		lns = append(lns, ln)
		log.Info("agent listening", "addr", ln.Addr().String(), "servers", servers.String())
	}
	if tcfg.Name != "" {
		tcfg.Logger = log.With("component", "tun")
		ifc, err := tunnet.Open(tcfg)
		if err != nil {
			return err // "tun: ..."
		}
		// Deferred after the listeners' Close, so run before it: on
		// every way out the routes and the device go.
		defer ifc.Close()
		lns = append(lns, ifc.Listener())
		log.Info("agent serving the TUN device's services", "dev", ifc.Name(), "services", services.String(), "servers", servers.String())
	}
	if *metricsListen != "" {
		mln, err := net.Listen("tcp", *metricsListen)
		if err != nil {
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", metrics.Handler())
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"status":"ok","connections":%d}`+"\n", a.Open())
		})
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go hs.Serve(mln)
		defer hs.Close()
		log.Info("metrics", "addr", mln.Addr().String())
	}
	served := make(chan error, len(lns))
	for _, ln := range lns {
		go func() { served <- a.Serve(ln) }()
	}
	select {
	case err := <-served:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	for _, ln := range lns {
		ln.Close()
	}
	log.Info("shutting down: no new connections", "relayed", a.Open(), "timeout", *shutdown)
	sctx, cancel := context.WithTimeout(context.Background(), *shutdown)
	defer cancel()
	if err := a.Shutdown(sctx); err != nil {
		log.Warn("connections still relayed at the shutdown timeout were reset")
	}
	return nil
}

// tunConfig checks the TUN mode's flags: the device's configuration (no
// Name without --tun) and whether --listen opens too (with --tun, only
// when given).
func tunConfig(fs *flag.FlagSet, name string, mtu int, services stringList) (tunnet.Config, bool, error) {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if name == "" {
		for _, f := range []string{"service", "tun-mtu"} {
			if given[f] {
				return tunnet.Config{}, false, fmt.Errorf("--%s is for TUN mode: give --tun NAME too", f)
			}
		}
		return tunnet.Config{}, false, nil
	}
	if len(services) == 0 {
		return tunnet.Config{}, false, errors.New("--tun needs at least one --service ADDR:PORT, e.g. --service 10.77.0.1:80")
	}
	cfg := tunnet.Config{Name: name, MTU: mtu}
	for _, s := range services {
		ap, err := tunnet.ParseService(s)
		if err != nil {
			return tunnet.Config{}, false, fmt.Errorf("--service: %w", err)
		}
		cfg.Services = append(cfg.Services, ap)
	}
	if err := cfg.Check(); err != nil {
		return tunnet.Config{}, false, err
	}
	return cfg, given["listen"], nil
}
