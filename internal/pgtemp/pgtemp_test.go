package pgtemp

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestStartRestartStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := Start(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	if err := s.CreateDatabase(ctx, "t1"); err != nil {
		t.Fatal(err)
	}
	query := func() int {
		c, err := pgx.Connect(ctx, s.URL("t1"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		var n int
		if err := c.QueryRow(ctx, "select 41+1").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if got := query(); got != 42 {
		t.Fatalf("got %d", got)
	}
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if got := query(); got != 42 {
		t.Fatalf("after restart got %d", got)
	}
}
