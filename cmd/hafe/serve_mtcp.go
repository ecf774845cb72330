package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"

	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/mtcp"
)

// minClusterKey is the shortest --cluster-key-file content accepted.
const minClusterKey = 16

// mtcpOptions are hafe serve's MTCP flags, checked.
type mtcpOptions struct {
	listen, advertise string
	key               []byte
	eager             bool
	maxInputLog       int // the request bodies served, and some
	tls               *serveTLS
}

// readMTCPOptions checks the MTCP flags; nil without --mtcp-listen.
func readMTCPOptions(listen, advertise, keyFile, mode string) (*mtcpOptions, error) {
	if listen == "" {
		if keyFile != "" || advertise != "" {
			return nil, errors.New("--cluster-key-file and --mtcp-advertise go with --mtcp-listen")
		}
		return nil, nil
	}
	o := &mtcpOptions{listen: listen, advertise: advertise}
	if host, _, err := net.SplitHostPort(listen); err != nil {
		return nil, fmt.Errorf("--mtcp-listen %q: want HOST:PORT", listen)
	} else if ip := net.ParseIP(host); advertise == "" && (host == "" || ip != nil && ip.IsUnspecified()) {
		return nil, fmt.Errorf("--mtcp-listen %s listens on every interface: give --mtcp-advertise HOST:PORT, the address clients and the other front-ends reach it at", listen)
	}
	switch mode {
	case "eager":
		o.eager = true
	case "lazy":
	default:
		return nil, fmt.Errorf("--mtcp-mode %q: want eager or lazy", mode)
	}
	if keyFile == "" {
		return nil, errors.New("--mtcp-listen needs --cluster-key-file: the front-ends authenticate each other with it when they hand connections over")
	}
	key, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("--cluster-key-file: %w", err)
	}
	key = bytes.TrimSpace(key)
	if len(key) < minClusterKey {
		return nil, fmt.Errorf("--cluster-key-file %s holds %d bytes; use at least %d random ones, e.g. head -c 32 /dev/urandom | base64 > %s", keyFile, len(key), minClusterKey, keyFile)
	}
	o.key = key
	return o, nil
}

// advertised is the MTCP address members publish ("" without MTCP).
func (o *mtcpOptions) advertised(ln *mtcp.Listener) string {
	if o == nil || ln == nil {
		return ""
	}
	return ln.Self()
}

func (o *mtcpOptions) mode() string {
	switch {
	case o == nil:
		return "off"
	case o.eager:
		return "eager"
	}
	return "lazy"
}

// listenMTCP opens the MTCP listener. Eager mode saves snapshots through a
// small pool of its own, so that busy batches cannot hold them up.
func listenMTCP(ctx context.Context, o *mtcpOptions, poolCfg *pgxpool.Config, id string, log *slog.Logger, observe func(mtcp.MigrationStats)) (ln *mtcp.Listener, closeStore func(), err error) {
	cfg := mtcp.ListenConfig{
		Logger:      log.With("component", "mtcp"),
		Self:        o.advertise,
		ClusterKey:  o.key,
		OnMigration: observe,
		Limits:      mtcp.Limits{MaxInputLog: max(o.maxInputLog, 8<<20)},
	}
	o.tls.configureMTCP(&cfg)
	if o.eager {
		scfg := poolCfg.Copy()
		scfg.MaxConns = 4
		// One connection open from the start: a front-end's first takeover
		// should not wait for a dial (3-5 ms measured by hafe bench failover).
		scfg.MinConns = 1
		pool, err := pgxpool.NewWithConfig(ctx, scfg)
		if err != nil {
			return nil, nil, fmt.Errorf("database: %w", err)
		}
		cfg.Store = backendext.NewSnapshotStore(pool, id)
		closeStore = pool.Close
	} else {
		closeStore = func() {}
	}
	ln, err = mtcp.Listen("tcp", o.listen, cfg)
	if err != nil {
		closeStore()
		return nil, nil, fmt.Errorf("--mtcp-listen: %w", err)
	}
	return ln, closeStore, nil
}
