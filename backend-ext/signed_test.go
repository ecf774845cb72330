package backendext

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestRecordOutcomeWritesOnlySignedOutcomes: a session logged in as the
// client role writes an outcome through hafe.record_outcome only with a
// front-end's signature over every field; with the lease check and the
// slot's key as a front-end's own insert has them. It cannot read the key.
func TestRecordOutcomeWritesOnlySignedOutcomes(t *testing.T) {
	ctx := context.Background()
	url, err := server.NewDatabase(ctx, "signed")
	if err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := Install(ctx, admin, InstallOptions{ForceSchema: true, ClientRole: "client_signed"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, "ALTER ROLE client_signed LOGIN PASSWORD 'pw'"); err != nil {
		t.Fatal(err)
	}
	key, err := ReadOutcomeKey(ctx, admin)
	if err != nil {
		t.Fatal(err)
	}
	batch := "00000000-0000-0000-0000-0000000000aa"
	if _, _, err := CreateBatch(ctx, admin, batch, "", []byte{1}, 3, "fe1", "run1", time.Second); err != nil {
		t.Fatal(err)
	}
	client, err := pgx.Connect(ctx, strings.Replace(url, "postgres://postgres@", "postgres://client_signed:pw@", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close(ctx)
	var who string
	if err := client.QueryRow(ctx, "SELECT session_user").Scan(&who); err != nil || who != "client_signed" {
		t.Fatalf("session_user %q (%v)", who, err)
	}
	if _, err := client.Exec(ctx, "SELECT key FROM hafe.outcome_key"); pgCode(err) != "42501" {
		t.Fatalf("the client reading the key: %v, want 42501", err)
	}

	o := Outcome{BatchID: batch, Seq: 1, Status: "committed", Report: []byte(`{"seq":1,"status":"committed","results":[]}`), Epoch: 1, Owner: "fe1", Attempts: 1}
	record := func(o Outcome, mac []byte) error {
		return OutcomeInserted(client.Exec(ctx, RecordOutcomeSQL, append(OutcomeArgs(o), mac)...))
	}
	forged := []struct {
		name string
		mac  []byte
		o    Outcome
	}{
		{"no signature", nil, o},
		{"an empty signature", []byte{}, o},
		{"a made-up signature", make([]byte, 32), o},
		{"another key", OutcomeMAC(make([]byte, 32), o), o},
	}
	signed := OutcomeMAC(key, o)
	for _, change := range []func(*Outcome){
		func(o *Outcome) { o.BatchID = "00000000-0000-0000-0000-0000000000ab" },
		func(o *Outcome) { o.Seq = 2 },
		func(o *Outcome) { o.Status = "aborted" },
		func(o *Outcome) { o.Report = []byte(`{"seq":1,"status":"committed","results":[{"forged":true}]}`) },
		func(o *Outcome) { o.Epoch = 2 },
		func(o *Outcome) { o.Owner = "fe2" },
		func(o *Outcome) { o.Attempts = 2 },
	} {
		f := o
		change(&f)
		forged = append(forged, struct {
			name string
			mac  []byte
			o    Outcome
		}{"a signature of another outcome", signed, f})
	}
	for _, f := range forged {
		if err := record(f.o, f.mac); pgCode(err) != "42501" {
			t.Fatalf("%s (%+v): %v, want 42501", f.name, f.o, err)
		}
	}
	var n int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM hafe.outcomes").Scan(&n); err != nil || n != 0 {
		t.Fatalf("forged outcomes wrote %d rows (%v)", n, err)
	}

	// Signed, it is written, once, and only under the current lease.
	if err := record(o, signed); err != nil {
		t.Fatal(err)
	}
	if err := record(o, signed); !errors.Is(err, ErrOutcomeExists) {
		t.Fatalf("the same outcome again: %v, want ErrOutcomeExists", err)
	}
	stale := Outcome{BatchID: batch, Seq: 2, Status: "committed", Report: []byte(`{}`), Epoch: 1, Owner: "fe1", Attempts: 1}
	if _, err := ClaimBatch(ctx, admin, batch, "fe2", "run2"); err != nil {
		t.Fatal(err)
	}
	if err := record(stale, OutcomeMAC(key, stale)); !errors.Is(err, ErrFenced) {
		t.Fatalf("an outcome of an old lease: %v, want ErrFenced", err)
	}
	got, ok, err := GetOutcome(ctx, admin, batch, 1)
	if err != nil || !ok || string(got.Report) != string(o.Report) || got.Owner != "fe1" || got.Epoch != 1 {
		t.Fatalf("recorded %+v %v %v", got, ok, err)
	}
	var xid bool
	if err := admin.QueryRow(ctx, "SELECT xid IS NOT NULL FROM hafe.outcomes WHERE seq = 1").Scan(&xid); err != nil || !xid {
		t.Fatalf("outcome has no xid (%v)", err)
	}
}

func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}
