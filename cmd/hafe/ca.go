package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"time"

	"hafe.dev/hafe/client"
)

// caFlagHelp is the help of the clients' --ca.
const caFlagHelp = "PEM CA certificate(s) the front-ends' TLS certificates (their --tls-cert) are checked against; https:// URLs without it are checked against the system's CAs"

// clientTLSConfig reads --ca; nil without it.
func clientTLSConfig(caFile string) (*tls.Config, error) {
	if caFile == "" {
		return nil, nil
	}
	pool, err := readCAFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("--ca: %w", err)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// adminHTTPClient is the HTTP client of the admin commands: the default
// one without --ca.
func adminHTTPClient(tc *tls.Config) *http.Client {
	if tc == nil {
		return nil
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: 10 * time.Second,
	}}
}

// caHint says which flag to check when a front-end's certificate did not
// verify; other errors it returns as they are.
func caHint(err error) error {
	if !errors.Is(err, client.ErrCertificate) {
		return err
	}
	return fmt.Errorf("%w\ncheck --ca: it must hold the CA certificate that signed the front-ends' --tls-cert, and the certificate must name the host in the URL", err)
}
