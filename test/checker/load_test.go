package checker

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/internal/pgtemp"
)

// TestCheckReadsTheBatchFromPostgreSQL writes goodWorld's rows into a real
// database the way hafe lays them out, then checks the streams against it:
// first as they are, then after a second committed execution of slot 4.
func TestCheckReadsTheBatchFromPostgreSQL(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL: skipped under -short")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	srv, err := pgtemp.Start(ctx, pgtemp.Options{})
	if errors.Is(err, pgtemp.ErrNoBinaries) {
		t.Skipf("no PostgreSQL server binaries here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	url, err := srv.NewDatabase(ctx, "checker")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := backendext.Install(ctx, conn, backendext.InstallOptions{}, nil); err != nil {
		t.Fatal(err)
	}

	w := goodWorld()
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := conn.Exec(ctx, q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	exec(`CREATE TABLE runs (slot integer NOT NULL)`)
	exec(`INSERT INTO hafe.batches (batch_id, idem_key, request_hash, n_txns, owner, epoch, state)
		VALUES ($1, 'k', '\x00', $2, NULL, 2, 'done')`, batchID, w.st.NumTxns)
	for _, o := range w.st.Outcomes {
		exec(`INSERT INTO hafe.outcomes (batch_id, seq, status, report, epoch, owner) VALUES ($1, $2, $3, $4, $5, $6)`,
			batchID, o.Seq, o.Status, string(o.Report), o.Epoch, o.Owner)
	}
	for seq, n := range w.st.Effects {
		for range n {
			exec(`INSERT INTO runs VALUES ($1)`, seq)
		}
	}
	opt := Options{EffectQuery: `SELECT slot FROM runs`}

	st, err := Load(ctx, conn, batchID, opt)
	if err != nil {
		t.Fatal(err)
	}
	if st.NumTxns != 5 || len(st.Outcomes) != 5 || len(st.Effects) != 4 {
		t.Fatalf("loaded %d slots, %d outcomes, effects %v", st.NumTxns, len(st.Outcomes), st.Effects)
	}
	if vs, err := Check(ctx, conn, batchID, w.raw(), opt); err != nil || len(vs) > 0 {
		t.Fatalf("correct failover: violations %v, err %v", vs, err)
	}

	exec(`INSERT INTO runs VALUES (4)`)
	vs, err := Check(ctx, conn, batchID, w.raw(), opt)
	if err != nil {
		t.Fatal(err)
	}
	if got := Kinds(vs); !slices.Equal(got, []Kind{ExecutedTwice}) {
		t.Fatalf("after a second execution of slot 4: %v", vs)
	}

	if _, err := Load(ctx, conn, "00000000-0000-0000-0000-000000000000", opt); err == nil {
		t.Error("Load of an unknown batch succeeded")
	}
}
