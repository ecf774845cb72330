package main

import (
	"context"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	backendext "hafe.dev/hafe/backend-ext"
	"hafe.dev/hafe/internal/pgtemp"
)

// TestServeRefusesDangerousRolesUnlessAllowed: a front-end whose client
// statements would run as a superuser, or as a role that may run programs
// or touch files on the database server (COPY … TO PROGRAM), does not
// start unless --allow-superuser says so, and says why; neither does one
// whose client role could reach schema hafe. A refused front-end writes
// nothing (issue 8.4).
func TestServeRefusesDangerousRolesUnlessAllowed(t *testing.T) {
	bin := buildServeBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := pgtemp.Start(ctx, pgtemp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })
	url, err := pg.NewDatabase(ctx, "roles")
	if err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := backendext.Install(ctx, admin, backendext.InstallOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	// Front-end roles as an operator would make them: hafe's records, and
	// membership in the client role.
	if _, err := admin.Exec(ctx, `
		CREATE ROLE fe LOGIN;
		CREATE ROLE fe_program LOGIN IN ROLE pg_execute_server_program;
		CREATE ROLE fe_files LOGIN IN ROLE pg_write_server_files;
		CREATE ROLE client_program NOLOGIN IN ROLE pg_execute_server_program;
		CREATE ROLE client_peeks NOLOGIN;
		GRANT USAGE ON SCHEMA hafe TO fe, fe_program, fe_files, client_peeks;
		GRANT ALL ON ALL TABLES IN SCHEMA hafe TO fe, fe_program, fe_files;
		GRANT hafe_client, client_peeks TO fe, fe_program, fe_files;`); err != nil {
		t.Fatal(err)
	}
	as := func(role string) string {
		return strings.Replace(url, "postgres://postgres@", "postgres://"+role+"@", 1)
	}

	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"superuser", []string{"--db", url}, []string{`"postgres" is a superuser`, "--allow-superuser"}},
		{"superuser with raw SQL", []string{"--db", url, "--allow-raw-sql"}, []string{`"postgres" is a superuser`}},
		{"pg_execute_server_program", []string{"--db", as("fe_program")}, []string{`"fe_program"`, "pg_execute_server_program", "--allow-superuser"}},
		{"pg_write_server_files", []string{"--db", as("fe_files")}, []string{"pg_write_server_files"}},
		{"client role runs programs", []string{"--db", as("fe"), "--allow-raw-sql", "--client-role", "client_program"}, []string{`"client_program"`, "pg_execute_server_program"}},
		{"client role is a superuser", []string{"--db", as("fe"), "--allow-raw-sql", "--client-role", "postgres"}, []string{`"postgres" is a superuser`}},
		{"client role reaches hafe", []string{"--db", as("fe"), "--allow-raw-sql", "--client-role", "client_peeks"}, []string{`"client_peeks"`, "schema hafe"}},
		{"client role reaches hafe even when superusers are allowed", []string{"--db", as("fe"), "--allow-raw-sql", "--client-role", "client_peeks", "--allow-superuser"}, []string{"schema hafe"}},
		{"client role missing", []string{"--db", as("fe"), "--allow-raw-sql", "--client-role", "nobody"}, []string{`"nobody" does not exist`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.CommandContext(ctx, bin, append([]string{"serve", "--listen", pickServeAddr(t), "--id", "fe-refused"}, tc.args...)...)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("serve started: %s", out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Fatalf("the refusal does not say %q:\n%s", w, out)
				}
			}
		})
	}
	var members int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM hafe.members").Scan(&members); err != nil || members != 0 {
		t.Fatalf("refused front-ends wrote %d members (err %v)", members, err)
	}

	// A plain role runs raw SQL as the client role; a superuser runs when
	// allowed.
	for _, args := range [][]string{{"--db", as("fe"), "--allow-raw-sql"}, {"--db", url, "--allow-superuser"}} {
		addr := pickServeAddr(t)
		cmd := exec.Command(bin, append([]string{"serve", "--listen", addr, "--id", "fe-ok"}, args...)...)
		var logs strings.Builder
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		deadline := time.After(30 * time.Second)
		for ready := false; !ready; {
			select {
			case <-exited:
				t.Fatalf("%v: serve exited:\n%s", args, logs.String())
			case <-deadline:
				cmd.Process.Kill()
				t.Fatalf("%v: serve never became ready:\n%s", args, logs.String())
			case <-time.After(50 * time.Millisecond):
				if r, err := http.Get("http://" + addr + "/readyz"); err == nil {
					r.Body.Close()
					ready = r.StatusCode == 200
				}
			}
		}
		cmd.Process.Kill()
		<-exited
	}
}
