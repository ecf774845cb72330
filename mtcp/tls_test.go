package mtcp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// testTLS returns a server config with a fresh self-signed certificate for
// 127.0.0.1 and a client config that trusts it.
func testTLS(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "mtcp test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	client = &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
	return server, client
}

func TestMigrationOverTLS(t *testing.T) {
	checkLeaks(t)
	srvTLS, cliTLS := testTLS(t)
	tc := newCluster(t, 2, nil, func(cfg *ListenConfig) {
		cfg.TLSConfig = srvTLS
		cfg.PeerTLSConfig = cliTLS
	})
	wg := tc.runXformServers(0.3)
	defer wg.Wait()
	defer func() {
		for _, l := range tc.lns {
			_ = l.Close()
		}
	}()
	d := testDialer(tc)
	d.TLSConfig = cliTLS
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := d.DialMTCP(ctx, tc.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	i, moved := 0, 0
	err = clientRun(ctx, c, 42, 200_000, func(int) error {
		if i >= 10 {
			time.Sleep(time.Millisecond)
			return nil
		}
		i++
		time.Sleep(2 * time.Millisecond)
		err := c.Migrate(ctx, tc.addrs[i%2])
		if err == nil {
			moved++
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d migrations over TLS", moved)
	if _, ok := c.LocalAddr().(*net.TCPAddr); !ok {
		t.Fatalf("local address %v", c.LocalAddr())
	}
}

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue returns a certificate for 127.0.0.1 valid for usage.
func (ca *testCA) issue(t *testing.T, usage ...x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "mtcp test server"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usage,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestPeerWithoutTheRightCertificateIsRefused: with PeerClientCAs, the peer
// channel is mutual TLS on top of the cluster key. Servers whose peer
// client certificate is missing or signed by another CA hold the right
// cluster key, yet cannot hand a connection over, and the refusing server
// says why in its log; with the right certificate the same move works.
func TestPeerWithoutTheRightCertificateIsRefused(t *testing.T) {
	checkLeaks(t)
	ca, rogue := newTestCA(t, "cluster CA"), newTestCA(t, "rogue CA")
	serverCert := ca.issue(t, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	for _, tc := range []struct {
		name    string
		certs   []tls.Certificate
		refused bool
	}{
		{"right certificate", []tls.Certificate{ca.issue(t, x509.ExtKeyUsageClientAuth)}, false},
		{"no certificate", nil, true},
		{"certificate of another CA", []tls.Certificate{rogue.issue(t, x509.ExtKeyUsageClientAuth)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs lockedLog
			log := slog.New(slog.NewTextHandler(&logs, nil))
			cl := newCluster(t, 2, nil, func(cfg *ListenConfig) {
				cfg.Logger = log
				cfg.TLSConfig = &tls.Config{Certificates: []tls.Certificate{serverCert}}
				cfg.PeerClientCAs = ca.pool
				cfg.PeerTLSConfig = &tls.Config{RootCAs: ca.pool, Certificates: tc.certs}
				cfg.PeerTimeout = time.Second
			})
			cl.echo()
			d := testDialer(cl)
			d.TLSConfig = &tls.Config{RootCAs: ca.pool}
			c := cl.dialChecked(d)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := c.Migrate(ctx, cl.addrs[1])
			if tc.refused {
				if err == nil {
					t.Fatal("the connection moved over a peer channel without the right certificate")
				}
				var re *RefusalError
				if !errors.As(err, &re) || re.Code != RefuseStateUnavailable {
					t.Errorf("migrate: %v, want a refusal: state unavailable", err)
				}
				if l := logs.String(); !strings.Contains(l, "peer refused: no client certificate signed by the peer CA") &&
					!strings.Contains(l, "TLS handshake refused: the remote's certificate does not verify") {
					t.Errorf("no log line says why the peer was refused:\n%s", l)
				}
				return
			}
			if err != nil {
				t.Fatalf("migrate with the right peer certificate: %v\n%s", err, logs.String())
			}
			echoCheck(t, c)
		})
	}
}

type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// BenchmarkRoundTripTLS is a small request and its answer on one MTCP
// connection (as a batch's request and report lines are), over plain TCP
// paths and over TLS paths: what TLS adds to a round trip.
func BenchmarkRoundTripTLS(b *testing.B) {
	srvTLS, cliTLS := testTLS(b)
	for _, withTLS := range []bool{false, true} {
		name := "tcp"
		if withTLS {
			name = "tls"
		}
		b.Run(name, func(b *testing.B) {
			cfg := ListenConfig{}
			d := &Dialer{}
			if withTLS {
				cfg.TLSConfig, d.TLSConfig = srvTLS, cliTLS
			}
			l, err := Listen("tcp", "127.0.0.1:0", cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			go func() {
				c, err := l.Accept()
				if err == nil {
					_, _ = io.Copy(c, c)
					c.Close()
				}
			}()
			c, err := d.Dial("tcp", l.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			msg, got := make([]byte, 200), make([]byte, 200)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, got); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
