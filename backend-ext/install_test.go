package backendext

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"hafe.dev/hafe/internal/pgtemp"
)

var server *pgtemp.Server

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	s, err := pgtemp.Start(ctx, pgtemp.Options{})
	cancel()
	if err != nil {
		panic(err)
	}
	server = s
	code := m.Run()
	s.Stop()
	os.Exit(code)
}

func connect(t *testing.T) *pgx.Conn {
	t.Helper()
	ctx := context.Background()
	url, err := server.NewDatabase(ctx, "ext")
	if err != nil {
		t.Fatal(err)
	}
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func TestSchemaInstallIsIdempotent(t *testing.T) {
	ctx := context.Background()
	c := connect(t)
	res, err := Install(ctx, c, InstallOptions{ForceSchema: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res != (InstallResult{Mode: ModeSchema, From: "", To: DefaultVersion}) {
		t.Fatalf("first install: %+v", res)
	}
	res, err = Install(ctx, c, InstallOptions{ForceSchema: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res != (InstallResult{Mode: ModeSchema, From: DefaultVersion, To: DefaultVersion}) {
		t.Fatalf("second install: %+v", res)
	}
	for _, table := range []string{"batches", "outcomes", "snapshots", "members"} {
		var ok bool
		if err := c.QueryRow(ctx, "SELECT to_regclass('hafe.'||$1) IS NOT NULL", table).Scan(&ok); err != nil || !ok {
			t.Fatalf("table %s missing (err %v)", table, err)
		}
	}
}

func TestSchemaUpgradesFromOldVersion(t *testing.T) {
	ctx := context.Background()
	c := connect(t)
	if _, err := Install(ctx, c, InstallOptions{ForceSchema: true, Version: "1.0"}, nil); err != nil {
		t.Fatal(err)
	}
	var members bool
	c.QueryRow(ctx, "SELECT to_regclass('hafe.members') IS NOT NULL").Scan(&members)
	if members {
		t.Fatal("version 1.0 should not have hafe.members")
	}
	res, err := Install(ctx, c, InstallOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Mode != ModeSchema || res.From != "1.0" || res.To != DefaultVersion {
		t.Fatalf("upgrade: %+v", res)
	}
	if _, err := GC(ctx, c, time.Hour); err != nil {
		t.Fatalf("gc after upgrade: %v", err)
	}
}

func TestUnknownVersionIsRefused(t *testing.T) {
	c := connect(t)
	if _, err := Install(context.Background(), c, InstallOptions{Version: "9.9"}, nil); err == nil {
		t.Fatal("install of an unknown version succeeded")
	}
}

// The extension mode needs the files in the server's extension directory;
// CI installs them there (hafe db install-files), elsewhere this test skips.
func TestCreateExtensionAndUpdate(t *testing.T) {
	if !extensionFilesInstalled(t) {
		t.Skip("this build's extension files are not installed (run: hafe db install-files)")
	}
	ctx := context.Background()
	c := connect(t)
	if _, err := Install(ctx, c, InstallOptions{Version: "1.0"}, nil); err != nil {
		t.Fatal(err)
	}
	res, err := Install(ctx, c, InstallOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Mode != ModeExtension || res.From != "1.0" || res.To != DefaultVersion {
		t.Fatalf("update: %+v", res)
	}
	var v string
	if err := c.QueryRow(ctx, "SELECT extversion FROM pg_extension WHERE extname = 'hafe'").Scan(&v); err != nil || v != DefaultVersion {
		t.Fatalf("extversion %q err %v", v, err)
	}
	// The update scripts ran as the extension's: a claim is recorded.
	const id = "00000000-0000-0000-0000-000000000001"
	if _, _, err := CreateBatch(ctx, c, id, "", []byte{1}, 1, "fe1", "run1", time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := ClaimBatch(ctx, c, id, "fe2", "run2"); err != nil {
		t.Fatal(err)
	}
	if ts, err := ListTakeovers(ctx, c, id); err != nil || len(ts) != 1 {
		t.Fatalf("takeovers %+v (err %v)", ts, err)
	}
}

func TestGCKeepsRunningBatches(t *testing.T) {
	ctx := context.Background()
	c := connect(t)
	if _, err := Install(ctx, c, InstallOptions{ForceSchema: true}, nil); err != nil {
		t.Fatal(err)
	}
	old := "00000000-0000-0000-0000-000000000001"
	running := "00000000-0000-0000-0000-000000000002"
	for _, id := range []string{old, running} {
		if _, _, err := CreateBatch(ctx, c, id, "", []byte{1}, 1, "fe1", "run1", time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if err := FinishBatch(ctx, c, old, 1); err != nil {
		t.Fatal(err)
	}
	// The running batch's owner is alive; a batch of a run that is gone
	// (abandoned) is collected with its outcome once left alone as long.
	if err := Heartbeat(ctx, c, Member{ID: "fe1", Incarnation: "run1"}); err != nil {
		t.Fatal(err)
	}
	abandoned := "00000000-0000-0000-0000-000000000003"
	if _, _, err := CreateBatch(ctx, c, abandoned, "", []byte{1}, 2, "fe9", "run9", time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, InsertOutcomeSQL, OutcomeArgs(Outcome{BatchID: abandoned, Seq: 1, Status: "committed", Report: []byte("{}"), Epoch: 1, Owner: "fe9"})...); err != nil {
		t.Fatal(err)
	}
	c.Exec(ctx, "UPDATE hafe.batches SET updated_at = now() - interval '2 days'")
	n, err := GC(ctx, c, 24*time.Hour)
	if err != nil || n != 3 {
		t.Fatalf("gc removed %d rows (err %v), want 3 (a done batch, an abandoned one and its outcome)", n, err)
	}
	if _, err := GetBatch(ctx, c, abandoned, time.Second); !errors.Is(err, ErrNoBatch) {
		t.Fatalf("abandoned batch past retention: %v, want gone", err)
	}
	if _, err := GetBatch(ctx, c, running, time.Second); err != nil {
		t.Fatalf("running batch gone: %v", err)
	}
}

// TestInstallCreatesTheClientRole: both install modes leave a NOLOGIN
// client role (an operator gives it a password) that may call
// hafe.record_outcome and do nothing else to schema hafe, and that the
// installing role has the privileges of (fencing ends its sessions).
func TestInstallCreatesTheClientRole(t *testing.T) {
	ctx := context.Background()
	modes := []InstallOptions{{ForceSchema: true, ClientRole: "hafe_client_schema"}}
	if extensionFilesInstalled(t) {
		modes = append(modes, InstallOptions{ClientRole: "hafe_client_ext"})
	}
	for _, opts := range modes {
		c := connect(t)
		res, err := Install(ctx, c, opts, nil)
		if err != nil {
			t.Fatal(err)
		}
		// Installing again (another database, or a restart) finds it made.
		if _, err := Install(ctx, c, opts, nil); err != nil {
			t.Fatalf("%s: second install: %v", res.Mode, err)
		}
		var login, usage, create, record, member bool
		if err := c.QueryRow(ctx, `SELECT rolcanlogin, has_schema_privilege(rolname, 'hafe', 'USAGE'), has_schema_privilege(rolname, 'hafe', 'CREATE'),
				has_function_privilege(rolname, $2, 'EXECUTE'), pg_has_role(current_user, rolname, 'USAGE')
			FROM pg_roles WHERE rolname = $1`, opts.ClientRole, recordOutcomeSignature).Scan(&login, &usage, &create, &record, &member); err != nil {
			t.Fatalf("%s: client role: %v", res.Mode, err)
		}
		if login || !usage || create || !record || !member {
			t.Fatalf("%s: client role can log in (%v), use (%v) or create in (%v) schema hafe, call record_outcome (%v), installer has its privileges (%v)", res.Mode, login, usage, create, record, member)
		}
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "SET LOCAL ROLE "+opts.ClientRole); err != nil {
			t.Fatalf("%s: %v", res.Mode, err)
		}
		for _, q := range []string{"DELETE FROM hafe.outcomes", "SELECT key FROM hafe.outcome_key", "SELECT count(*) FROM hafe.batches"} {
			if _, err := tx.Exec(ctx, "SAVEPOINT s"); err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, q); err == nil || !strings.Contains(err.Error(), "42501") {
				t.Fatalf("%s: the client role: %s: %v, want permission denied", res.Mode, q, err)
			}
			if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT s"); err != nil {
				t.Fatal(err)
			}
		}
		tx.Rollback(ctx)
	}
}

// extensionFilesInstalled reports whether the server's extension directory
// holds exactly this build's extension files, so that CREATE EXTENSION
// installs what is tested here.
func extensionFilesInstalled(t *testing.T) bool {
	t.Helper()
	bin, _ := pgtemp.FindBinDir()
	share := filepath.Join("/usr/share/postgresql", filepath.Base(filepath.Dir(bin)), "extension")
	entries, _ := extensionFiles.ReadDir("extension")
	for _, e := range entries {
		want, _ := extensionFiles.ReadFile("extension/" + e.Name())
		got, err := os.ReadFile(filepath.Join(share, e.Name()))
		if err != nil || string(got) != string(want) {
			t.Logf("extension mode not tried: %s in %s is not this build's (hafe db install-files)", e.Name(), share)
			return false
		}
	}
	return true
}
