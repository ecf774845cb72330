package backendext

import (
	"context"
	"fmt"
	"strings"
)

// serverAccessRoles are the predefined roles whose members may run programs
// on the database server or read and write its files (COPY … TO PROGRAM,
// COPY … TO '/file', pg_read_file).
var serverAccessRoles = []string{"pg_execute_server_program", "pg_write_server_files", "pg_read_server_files"}

// Roles describes the roles a front-end's statements run as: the session
// role of its pool (templates, and hafe's own records), and the client role
// that raw SQL sessions log in as.
type Roles struct {
	Session          string
	SessionSuperuser bool
	SessionServer    []string // serverAccessRoles whose privileges it has

	Client       string
	ClientExists bool
	// ClientRoles is the client role and every role it is a member of: a
	// session logged in as the client role may SET ROLE to any of them,
	// so each is held to the client's rules.
	ClientRoles []ClientRole
	// ClientRecords: the client role may call hafe.record_outcome.
	ClientRecords bool
	// SessionSignals: the session role has the client role's privileges,
	// so fencing may terminate client sessions (pg_terminate_backend).
	SessionSignals bool
}

// ClientRole is what one role a client session may become could do.
type ClientRole struct {
	Name                                       string
	Superuser, BypassRLS, CreateRole, CreateDB bool
	Server                                     []string // serverAccessRoles whose privileges it has
	// Hafe lists what it may do to schema hafe beyond calling
	// hafe.record_outcome ("owns schema hafe", "privileges on table
	// hafe.outcomes", …).
	Hafe []string
	// Trojan lists the schemas on the front-end's search_path it may
	// create objects in: templates, which run as the front-end's role,
	// could call a function it planted there.
	Trojan []string
}

// ReadRoles reads what the connected session role and clientRole may do.
func ReadRoles(ctx context.Context, db DB, clientRole string) (Roles, error) {
	r := Roles{Client: clientRole}
	err := db.QueryRow(ctx, `
		SELECT s.rolname::text, s.rolsuper,
			ARRAY(SELECT p FROM unnest($2::text[]) p WHERE pg_has_role(s.oid, p, 'USAGE')),
			c.oid IS NOT NULL,
			coalesce(to_regprocedure($3) IS NOT NULL AND has_function_privilege(c.oid, to_regprocedure($3), 'EXECUTE'), false),
			coalesce(pg_has_role(s.oid, c.oid, 'USAGE'), false)
		FROM pg_roles s LEFT JOIN pg_roles c ON c.rolname = $1
		WHERE s.rolname = session_user`, clientRole, serverAccessRoles, recordOutcomeSignature).Scan(
		&r.Session, &r.SessionSuperuser, &r.SessionServer, &r.ClientExists, &r.ClientRecords, &r.SessionSignals)
	if err != nil {
		return r, fmt.Errorf("read database roles: %w", err)
	}
	if !r.ClientExists {
		return r, nil
	}
	rows, err := db.Query(ctx, `
		WITH n AS (SELECT oid, nspowner FROM pg_namespace WHERE nspname = 'hafe')
		SELECT r.rolname::text, r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb,
			ARRAY(SELECT p FROM unnest($2::text[]) p WHERE pg_has_role(r.oid, p, 'USAGE')),
			ARRAY(
				SELECT 'owns schema hafe' FROM n WHERE n.nspowner = r.oid
				UNION ALL SELECT 'CREATE on schema hafe' FROM n WHERE has_schema_privilege(r.oid, n.oid, 'CREATE')
				UNION ALL SELECT 'privileges on hafe.' || c.relname FROM pg_class c, n
					WHERE c.relnamespace = n.oid AND (c.relowner = r.oid OR
						CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(r.oid, c.oid, 'USAGE,SELECT,UPDATE')
						WHEN c.relkind IN ('r', 'p', 'v', 'm', 'f') THEN has_table_privilege(r.oid, c.oid, 'SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER')
						ELSE false END)
				UNION ALL SELECT 'owns or may run hafe.' || p.proname || '()' FROM pg_proc p, n
					WHERE p.pronamespace = n.oid AND (p.proowner = r.oid OR
						p.prosecdef AND p.oid IS DISTINCT FROM to_regprocedure($3) AND has_function_privilege(r.oid, p.oid, 'EXECUTE'))),
			ARRAY(SELECT s FROM unnest(current_schemas(false)) s WHERE has_schema_privilege(r.oid, s, 'CREATE'))
		FROM pg_roles c JOIN pg_roles r ON pg_has_role(c.oid, r.oid, 'MEMBER')
		WHERE c.rolname = $1
		ORDER BY r.rolname = $1 DESC, r.rolname`, clientRole, serverAccessRoles, recordOutcomeSignature)
	if err != nil {
		return r, fmt.Errorf("read client role: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var c ClientRole
		if err := rows.Scan(&c.Name, &c.Superuser, &c.BypassRLS, &c.CreateRole, &c.CreateDB, &c.Server, &c.Hafe, &c.Trojan); err != nil {
			return r, fmt.Errorf("read client role: %w", err)
		}
		r.ClientRoles = append(r.ClientRoles, c)
	}
	if err := rows.Err(); err != nil {
		return r, fmt.Errorf("read client role: %w", err)
	}
	return r, nil
}

// Problems lists why a front-end must not serve clients with these roles.
// allowSuperuser accepts a session role that may do anything on the
// database server; it never excuses the client role. rawSQL says raw SQL
// is accepted, so the client role matters.
func (r Roles) Problems(allowSuperuser, rawSQL bool) []string {
	var out []string
	if !allowSuperuser {
		switch {
		case r.SessionSuperuser:
			out = append(out, fmt.Sprintf("the database role %q is a superuser: a template could do anything on the database server (COPY … TO PROGRAM, files, other databases); use a role without SUPERUSER, or pass --allow-superuser", r.Session))
		case len(r.SessionServer) > 0:
			out = append(out, fmt.Sprintf("the database role %q has the privileges of %s: a template could run programs or read and write files on the database server; revoke them, or pass --allow-superuser", r.Session, strings.Join(r.SessionServer, ", ")))
		}
	}
	if !rawSQL {
		return out
	}
	q := quoteIdent(r.Client)
	if !r.ClientExists {
		return append(out, fmt.Sprintf("client role %q does not exist: run hafe db install --client-role %s, then ALTER ROLE %s LOGIN PASSWORD '…' and give that role's credentials to --raw-sql-db", r.Client, r.Client, q))
	}
	for _, c := range r.ClientRoles {
		who := fmt.Sprintf("client role %q", c.Name)
		fix := func(what string) string { return fmt.Sprintf("ALTER ROLE %s %s", quoteIdent(c.Name), what) }
		if c.Name != r.Client {
			who = fmt.Sprintf("role %q, which client role %q is a member of (and may SET ROLE to),", c.Name, r.Client)
			fix = func(string) string { return fmt.Sprintf("REVOKE %s FROM %s", quoteIdent(c.Name), q) }
		}
		var attrs []string
		for _, a := range []struct {
			has  bool
			name string
		}{{c.Superuser, "SUPERUSER"}, {c.BypassRLS, "BYPASSRLS"}, {c.CreateRole, "CREATEROLE"}, {c.CreateDB, "CREATEDB"}} {
			if a.has {
				attrs = append(attrs, a.name)
			}
		}
		if len(attrs) > 0 {
			no := make([]string, len(attrs))
			for i, a := range attrs {
				no[i] = "NO" + a
			}
			out = append(out, fmt.Sprintf("%s has %s: raw SQL could reach past its grants; %s", who, strings.Join(attrs, ", "), fix(strings.Join(no, " "))))
		}
		if len(c.Server) > 0 {
			out = append(out, fmt.Sprintf("%s has the privileges of %s: raw SQL could run programs or read and write files on the database server; REVOKE them", who, strings.Join(c.Server, ", ")))
		}
		if len(c.Hafe) > 0 && !c.Superuser {
			out = append(out, fmt.Sprintf("%s could change hafe's records (%s); it may only call hafe.record_outcome: %s", who, strings.Join(c.Hafe, ", "), revokeHafe(c.Name, c.Name != r.Client, q)))
		}
		if len(c.Trojan) > 0 && !c.Superuser {
			out = append(out, fmt.Sprintf("%s may create objects in schema %s, which is on the front-end's search_path: templates could run a function it planted there with the front-end's privileges; REVOKE CREATE ON SCHEMA %s FROM %s", who, strings.Join(c.Trojan, ", "), strings.Join(c.Trojan, ", "), quoteIdent(c.Name)))
		}
	}
	if !r.ClientRecords {
		out = append(out, fmt.Sprintf("client role %q may not call hafe.record_outcome, so no raw SQL transaction could commit: run hafe db install --client-role %s (or GRANT USAGE ON SCHEMA hafe TO %s; GRANT EXECUTE ON FUNCTION %s TO %s)", r.Client, r.Client, q, recordOutcomeSignature, q))
	}
	if !r.SessionSignals {
		out = append(out, fmt.Sprintf("the database role %q does not have client role %q's privileges, so fencing could not terminate a client session that holds a batch: GRANT %s TO %s", r.Session, r.Client, q, quoteIdent(r.Session)))
	}
	return out
}

func revokeHafe(role string, member bool, client string) string {
	if member {
		return fmt.Sprintf("REVOKE %s FROM %s", quoteIdent(role), client)
	}
	q := quoteIdent(role)
	return fmt.Sprintf("REVOKE ALL ON ALL TABLES IN SCHEMA hafe FROM %s; REVOKE CREATE ON SCHEMA hafe FROM %s", q, q)
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
