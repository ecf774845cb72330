package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"slices"
	"sync/atomic"
	"syscall"

	"hafe.dev/hafe/mtcp"
)

// tlsFlags are hafe serve's TLS flags.
type tlsFlags struct {
	cert, key         *string
	peerCA            *string
	peerCert, peerKey *string
}

func addTLSFlags(fs *flag.FlagSet) *tlsFlags {
	return &tlsFlags{
		cert:     fs.String("tls-cert", "", "PEM certificate (chain) of this front-end: with --tls-key, --listen serves HTTPS (the API, admin routes, metrics, dashboard) and --mtcp-listen TLS, both with this certificate. Reloaded with --tls-key on SIGHUP, without dropping connections"),
		key:      fs.String("tls-key", "", "PEM private key of --tls-cert"),
		peerCA:   fs.String("peer-ca", "", "PEM CA certificate(s) the front-ends' certificates are signed by, for the peer channel between front-ends (needed with --tls-cert and --mtcp-listen): a front-end checks the other's --tls-cert with it, and serves a peer only if it shows a client certificate (--peer-cert) it signed, on top of --cluster-key-file"),
		peerCert: fs.String("peer-cert", "", "PEM client certificate this front-end shows its peers, issued for client authentication by --peer-ca (default: --tls-cert, which then needs both serverAuth and clientAuth usages). Reloaded on SIGHUP"),
		peerKey:  fs.String("peer-key", "", "PEM private key of --peer-cert (default: --tls-key)"),
	}
}

// serveTLS is a front-end's TLS: its certificates, swapped whole on
// reload so that handshakes under way keep the pair they started with, and
// the CA its peers are checked against.
type serveTLS struct {
	certFile, keyFile         string
	peerCertFile, peerKeyFile string
	peerCA                    *x509.CertPool
	cert, peerCert            atomic.Pointer[tls.Certificate]
}

// load checks the TLS flags and reads the files; nil without --tls-cert.
// withMTCP says whether --mtcp-listen is given.
func (f *tlsFlags) load(withMTCP bool) (*serveTLS, error) {
	if (*f.cert == "") != (*f.key == "") {
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	if (*f.peerCert == "") != (*f.peerKey == "") {
		return nil, errors.New("--peer-cert and --peer-key go together")
	}
	if *f.cert == "" {
		if *f.peerCA != "" || *f.peerCert != "" {
			return nil, errors.New("--peer-ca, --peer-cert and --peer-key go with --tls-cert and --mtcp-listen")
		}
		return nil, nil
	}
	s := &serveTLS{certFile: *f.cert, keyFile: *f.key, peerCertFile: *f.peerCert, peerKeyFile: *f.peerKey}
	if s.peerCertFile == "" {
		s.peerCertFile, s.peerKeyFile = s.certFile, s.keyFile
	}
	switch {
	case withMTCP && *f.peerCA == "":
		return nil, errors.New("--mtcp-listen with --tls-cert needs --peer-ca: the front-ends check each other's certificates with it on the peer channel (mutual TLS)")
	case !withMTCP && (*f.peerCA != "" || *f.peerCert != ""):
		return nil, errors.New("--peer-ca, --peer-cert and --peer-key go with --mtcp-listen")
	case withMTCP:
		pool, err := readCAFile(*f.peerCA)
		if err != nil {
			return nil, fmt.Errorf("--peer-ca: %w", err)
		}
		s.peerCA = pool
	}
	if err := s.reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// reload reads the certificates again. On an error the ones in use stay.
func (s *serveTLS) reload() error {
	cert, err := loadKeyPair(s.certFile, s.keyFile, x509.ExtKeyUsageServerAuth)
	if err != nil {
		return fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	var peer *tls.Certificate
	if s.peerCA != nil {
		if peer, err = loadKeyPair(s.peerCertFile, s.peerKeyFile, x509.ExtKeyUsageClientAuth); err != nil {
			if s.peerCertFile == s.certFile {
				return fmt.Errorf("--tls-cert as the peer certificate: %w (or give --peer-cert/--peer-key)", err)
			}
			return fmt.Errorf("--peer-cert/--peer-key: %w", err)
		}
	}
	s.cert.Store(cert)
	if peer != nil {
		s.peerCert.Store(peer)
	}
	return nil
}

// loadKeyPair reads a certificate and its key, and checks that the
// certificate is valid for usage, so a wrong one fails at start rather
// than at the first handshake.
func loadKeyPair(certFile, keyFile string, usage x509.ExtKeyUsage) (*tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, err
		}
	}
	if len(leaf.ExtKeyUsage) > 0 && !slices.Contains(leaf.ExtKeyUsage, usage) && !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageAny) {
		name := map[x509.ExtKeyUsage]string{x509.ExtKeyUsageServerAuth: "serverAuth", x509.ExtKeyUsageClientAuth: "clientAuth"}[usage]
		return nil, fmt.Errorf("%s is not valid for %s (its extended key usage)", certFile, name)
	}
	return &cert, nil
}

// readCAFile reads PEM CA certificates into a pool.
func readCAFile(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}

// server is the TLS configuration of --listen and --mtcp-listen: the
// certificate in use at each handshake.
func (s *serveTLS) server() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.cert.Load(), nil
		},
	}
}

// listenHTTPS wraps --listen in TLS. HTTP/1.1 only: the batch API streams
// over it, and MTCP serves the same API as HTTP/1.1.
func (s *serveTLS) listenHTTPS(ln net.Listener) net.Listener {
	if s == nil {
		return ln
	}
	cfg := s.server()
	cfg.NextProtos = []string{"http/1.1"}
	return tls.NewListener(ln, cfg)
}

// configureMTCP makes the MTCP listener serve TLS, and its peer channel
// mutual TLS checked against --peer-ca.
func (s *serveTLS) configureMTCP(cfg *mtcp.ListenConfig) {
	if s == nil {
		return
	}
	cfg.TLSConfig = s.server()
	cfg.PeerClientCAs = s.peerCA
	cfg.PeerTLSConfig = &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    s.peerCA,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return s.peerCert.Load(), nil
		},
	}
}

// reloadOnSIGHUP reloads the certificates on every SIGHUP until stop is
// called. Connections keep the certificate they were made with; new
// handshakes get the new one.
// Without TLS a SIGHUP is logged and ignored, rather than ending the
// process as it would by default (systemctl reload sends one).
func (s *serveTLS) reloadOnSIGHUP(log *slog.Logger) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		for {
			select {
			case <-done:
				return
			case <-hup:
				if s == nil {
					log.Info("SIGHUP: no TLS certificates to reload (no --tls-cert); nothing done")
					continue
				}
				if err := s.reload(); err != nil {
					log.Error("TLS certificates not reloaded: the ones in use stay", "err", err)
					continue
				}
				log.Info("TLS certificates reloaded", "cert", s.certFile, "peer_cert", s.peerCertFile, "not_after", s.cert.Load().Leaf.NotAfter)
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		close(done)
		<-ended
	}
}
