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

// TestServeRefusesDangerousRolesUnlessAllowed: a front-end whose
// templates would run as a superuser, or as a role that may run programs
// or touch files on the database server (COPY … TO PROGRAM), does not
// start unless --allow-superuser says so, and says why. Raw SQL needs
// --raw-sql-db, logging in as a client role that is no superuser, has no
// BYPASSRLS, CREATEROLE or CREATEDB, may do nothing to schema hafe but call
// hafe.record_outcome, and is a member of no role that may: nothing
// excuses those. A refused front-end writes nothing (issue 8.1, 8.4).
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
	if _, err := backendext.Install(ctx, admin, backendext.InstallOptions{ForceSchema: true}, nil); err != nil {
		t.Fatal(err)
	}
	// Roles as an operator would make them: a front-end role with hafe's
	// records and the client role's privileges (to fence its sessions),
	// and client roles good and bad, each with a password.
	if _, err := admin.Exec(ctx, `
		CREATE ROLE fe LOGIN PASSWORD 'pw';
		CREATE ROLE fe_program LOGIN PASSWORD 'pw' IN ROLE pg_execute_server_program;
		CREATE ROLE fe_files LOGIN PASSWORD 'pw' IN ROLE pg_write_server_files;
		GRANT USAGE ON SCHEMA hafe TO fe, fe_program, fe_files;
		GRANT ALL ON ALL TABLES IN SCHEMA hafe TO fe, fe_program, fe_files;
		ALTER ROLE hafe_client LOGIN PASSWORD 'pw';
		CREATE ROLE client_program LOGIN PASSWORD 'pw' IN ROLE pg_execute_server_program;
		CREATE ROLE client_peeks LOGIN PASSWORD 'pw';
		CREATE ROLE client_member LOGIN PASSWORD 'pw' IN ROLE fe;
		CREATE ROLE client_creates LOGIN PASSWORD 'pw' CREATEDB CREATEROLE;
		CREATE ROLE client_bypass LOGIN PASSWORD 'pw' BYPASSRLS;
		CREATE ROLE client_nologin NOLOGIN PASSWORD 'pw';
		CREATE ROLE client_unsigned LOGIN PASSWORD 'pw';
		CREATE SCHEMA planted; GRANT CREATE ON SCHEMA planted TO hafe_client; GRANT USAGE ON SCHEMA planted TO fe;
		GRANT SELECT ON hafe.outcomes TO client_peeks;
		GRANT hafe_client, client_peeks, client_creates, client_bypass, client_nologin, client_unsigned TO fe, fe_program, fe_files;`); err != nil {
		t.Fatal(err)
	}
	for _, role := range []string{"client_program", "client_peeks", "client_member", "client_creates", "client_bypass", "client_nologin"} {
		if _, err := backendext.Install(ctx, admin, backendext.InstallOptions{ForceSchema: true, ClientRole: role}, nil); err != nil {
			t.Fatal(err)
		}
	}
	as := func(role string) string {
		return strings.Replace(url, "postgres://postgres@", "postgres://"+role+":pw@", 1)
	}

	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"superuser", []string{"--db", url}, []string{`"postgres" is a superuser`, "--allow-superuser"}},
		{"superuser with raw SQL", []string{"--db", url, "--allow-raw-sql", "--raw-sql-db", as("hafe_client")}, []string{`"postgres" is a superuser`}},
		{"pg_execute_server_program", []string{"--db", as("fe_program")}, []string{`"fe_program"`, "pg_execute_server_program", "--allow-superuser"}},
		{"pg_write_server_files", []string{"--db", as("fe_files")}, []string{"pg_write_server_files"}},
		{"raw SQL without its own login", []string{"--db", as("fe"), "--allow-raw-sql"}, []string{"--allow-raw-sql needs --raw-sql-db", "LOGIN PASSWORD"}},
		{"client role runs programs", []string{"--db", as("fe"), "--allow-raw-sql", "--raw-sql-db", as("client_program")}, []string{`"client_program"`, "pg_execute_server_program"}},
		{"client role is a superuser", []string{"--db", as("fe"), "--allow-raw-sql", "--raw-sql-db", url}, []string{`client role "postgres" has SUPERUSER`}},
		{"client role is a superuser even when superusers are allowed", []string{"--db", url, "--allow-superuser", "--allow-raw-sql", "--raw-sql-db", url}, []string{`client role "postgres" has SUPERUSER`}},
		{"client role reaches hafe", []string{"--db", as("fe"), "--allow-raw-sql", "--raw-sql-db", as("client_peeks")}, []string{`"client_peeks"`, "hafe.outcomes"}},
		{"client role reaches hafe even when superusers are allowed", []string{"--db", as("fe"), "--allow-raw-sql", "--raw-sql-db", as("client_peeks"), "--allow-superuser"}, []string{"hafe.outcomes"}},
		{"client role is a member of the front-end's", []string{"--db", as("fe"), "--allow-raw-sql", "--raw-sql-db", as("client_member")}, []string{`role "fe", which client role "client_member" is a member of`, `REVOKE "fe" FROM "client_member"`}},
		{"client role creates roles and databases", []string{"--db", as("fe"), "--allow-raw-sql", "--raw-sql-db", as("client_creates")}, []string{"CREATEROLE, CREATEDB", "NOCREATEROLE NOCREATEDB"}},
		{"client role bypasses row security", []string{"--db", as("fe"), "--allow-raw-sql", "--raw-sql-db", as("client_bypass")}, []string{"BYPASSRLS"}},
		{"client role may not record outcomes", []string{"--db", as("fe"), "--allow-raw-sql", "--raw-sql-db", as("client_unsigned")}, []string{"hafe.record_outcome", "hafe db install --client-role client_unsigned"}},
		{"client role cannot log in", []string{"--db", as("fe"), "--allow-raw-sql", "--raw-sql-db", as("client_nologin")}, []string{`cannot log in as the client role "client_nologin"`, "LOGIN PASSWORD"}},
		{"client role is not the one named", []string{"--db", as("fe"), "--allow-raw-sql", "--raw-sql-db", as("client_peeks"), "--client-role", "hafe_client"}, []string{`logs in as "client_peeks"`}},
		{"client role missing", []string{"--db", as("fe"), "--allow-raw-sql", "--raw-sql-db", as("nobody")}, []string{`"nobody" does not exist`}},
		{"client role may plant objects on the front-end's search_path", []string{"--db", as("fe") + "&search_path=planted%2Cpublic", "--allow-raw-sql", "--raw-sql-db", as("hafe_client")}, []string{"schema planted", "REVOKE CREATE ON SCHEMA planted"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A front-end that starts instead is stopped, not waited for.
			ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
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

	// A plain role with a client login runs raw SQL; a superuser runs
	// when allowed.
	for _, args := range [][]string{{"--db", as("fe"), "--allow-raw-sql", "--raw-sql-db", as("hafe_client")}, {"--db", url, "--allow-superuser"}} {
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
