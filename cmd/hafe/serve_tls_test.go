package main

import (
	"crypto/x509"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestServeTLSFlagsAreChecked: the TLS flags that cannot work together
// are refused at start, each with what to do.
func TestServeTLSFlagsAreChecked(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, dir, "ca")
	cert, key := ca.issue(t, "fe", "fe")
	serverOnly, serverOnlyKey := filepath.Join(dir, "server-only.pem"), filepath.Join(dir, "server-only.key")
	{
		c, k := ca.issuePEMUsage(t, "server only", x509.ExtKeyUsageServerAuth)
		replaceFile(t, serverOnly, c)
		replaceFile(t, serverOnlyKey, k)
	}
	for _, tc := range []struct {
		name                      string
		cert, key, peerCA, pc, pk string
		mtcp                      bool
		want                      string // "" loads
	}{
		{"no TLS", "", "", "", "", "", true, ""},
		{"HTTPS only", cert, key, "", "", "", false, ""},
		{"HTTPS and MTCP with a peer CA", cert, key, ca.file, "", "", true, ""},
		{"certificate without key", cert, "", "", "", "", false, "--tls-cert and --tls-key go together"},
		{"MTCP without a peer CA", cert, key, "", "", "", true, "needs --peer-ca"},
		{"peer CA without MTCP", cert, key, ca.file, "", "", false, "go with --mtcp-listen"},
		{"peer CA without a certificate", "", "", ca.file, "", "", true, "go with --tls-cert"},
		{"certificate for servers only as the peer's", serverOnly, serverOnlyKey, ca.file, "", "", true, "not valid for clientAuth"},
		{"certificate for servers only, and a peer one", serverOnly, serverOnlyKey, ca.file, cert, key, true, ""},
		{"key of another certificate", cert, serverOnlyKey, "", "", "", false, "private key does not match"},
		{"peer CA file without certificates", cert, key, key, "", "", true, "holds no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &tlsFlags{cert: &tc.cert, key: &tc.key, peerCA: &tc.peerCA, peerCert: &tc.pc, peerKey: &tc.pk}
			s, err := f.load(tc.mtcp)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want == "":
				if (s == nil) != (tc.cert == "") {
					t.Errorf("TLS %v, want %v", s != nil, tc.cert != "")
				}
			case err == nil || !strings.Contains(err.Error(), tc.want):
				t.Errorf("%v, want an error saying %q", err, tc.want)
			}
		})
	}
}

// TestServeWithoutTLSOutlivesSIGHUP: systemctl reload sends SIGHUP, which
// would end a process that does not handle it; a front-end without
// --tls-cert logs that it has nothing to reload and goes on serving.
func TestServeWithoutTLSOutlivesSIGHUP(t *testing.T) {
	requirePostgresBinaries(t)
	p := startServe(t, "--id", "fe-hup", "--install")
	p.cmd.Process.Signal(syscall.SIGHUP)
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-p.exited:
		t.Fatalf("hafe serve ended on SIGHUP: %v\n%s", err, p.logs.String())
	default:
	}
	waitServeReady(t, "http://"+p.addr)
	p.cmd.Process.Kill()
	<-p.exited
	if !strings.Contains(p.logs.String(), "SIGHUP: no TLS certificates to reload") {
		t.Errorf("no log line says SIGHUP did nothing:\n%s", p.logs.String())
	}
}
