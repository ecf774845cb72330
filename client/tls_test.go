package client_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"hafe.dev/hafe/client"
)

// TestSubmitStopsAtCertificatesItCannotVerify: front-ends whose
// certificate the client's CAs did not sign are not retried; Submit ends
// at once with a CertificateError saying why. With their CA the same
// front-ends are reached.
func TestSubmitStopsAtCertificatesItCannotVerify(t *testing.T) {
	var served atomic.Int32
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.Write([]byte(`{"seq":1,"status":"committed"}` + "\n" + `{"done":true,"transactions":1,"committed":1,"aborted":0}` + "\n"))
	})
	a, b := httptest.NewTLSServer(h), httptest.NewTLSServer(h)
	defer a.Close()
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.New(client.Config{FrontEnds: []string{a.URL, b.URL}, TLSConfig: &tls.Config{RootCAs: x509.NewCertPool()}, MinBackoff: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	sum, err := c.Submit(ctx, client.Request{Body: []byte(`{"transactions":[{"template":"balance","args":{"id":1}}]}`)})
	var cerr *client.CertificateError
	if !errors.As(err, &cerr) || !errors.Is(err, client.ErrCertificate) || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Fatalf("Submit: %v, want a CertificateError: signed by unknown authority", err)
	}
	if sum.Attempts != 2 || time.Since(start) > 900*time.Millisecond || served.Load() != 0 {
		t.Errorf("%d attempts in %v, %d served: want each front-end tried once, without a pause", sum.Attempts, time.Since(start), served.Load())
	}

	pool := x509.NewCertPool()
	pool.AddCert(a.Certificate())
	c, err = client.New(client.Config{FrontEnds: []string{a.URL}, TLSConfig: &tls.Config{RootCAs: pool}})
	if err != nil {
		t.Fatal(err)
	}
	if sum, err := c.Submit(ctx, client.Request{Body: []byte(`{"transactions":[{"template":"balance","args":{"id":1}}]}`)}); err != nil || !sum.Done {
		t.Fatalf("with the front-end's CA: %+v, %v", sum, err)
	}
}
