package mtcp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"
)

// testTLS returns a server config with a fresh self-signed certificate for
// 127.0.0.1 and a client config that trusts it.
func testTLS(t *testing.T) (server, client *tls.Config) {
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
