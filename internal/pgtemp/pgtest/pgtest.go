// Package pgtest gives a package's tests one throwaway PostgreSQL server
// (internal/pgtemp) and a fresh database per test with hafe installed.
//
// The invariant: tests share the server, never a database.
package pgtest

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/internal/pgtemp"
)

// Main starts the server, runs the tests, stops the server and exits; call
// it from TestMain. after, if not nil, runs once the tests are done, with
// their exit code, and returns the code to exit with (a leak check, say).
func Main(m *testing.M, server **pgtemp.Server, after func(code int) int) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	s, err := pgtemp.Start(ctx, pgtemp.Options{})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	*server = s
	code := m.Run()
	if after != nil {
		code = after(code)
	}
	s.Stop()
	os.Exit(code)
}

// Database creates a fresh database on s, installs hafe in it, runs each
// setup script, and returns its URL.
func Database(t testing.TB, s *pgtemp.Server, prefix string, setup ...string) string {
	t.Helper()
	ctx := context.Background()
	url, err := s.NewDatabase(ctx, prefix)
	if err != nil {
		t.Fatal(err)
	}
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	// As a plain schema: the server's extension directory is shared by
	// whoever installed files there, and may hold another build's scripts.
	if _, err := backendext.Install(ctx, c, backendext.InstallOptions{ForceSchema: true}, nil); err != nil {
		t.Fatal(err)
	}
	for _, sql := range setup {
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	return url
}
