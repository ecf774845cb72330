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
// raw SQL runs as.
type Roles struct {
	Session          string
	SessionSuperuser bool
	SessionServer    []string // serverAccessRoles whose privileges it has

	Client          string
	ClientExists    bool
	ClientSuperuser bool
	ClientServer    []string
	// ClientMember: the session role may SET ROLE to the client role.
	ClientMember bool
	// ClientReachesHafe: the client role has USAGE or CREATE on schema hafe.
	ClientReachesHafe bool
}

// ReadRoles reads what the connected session role and clientRole may do.
func ReadRoles(ctx context.Context, db DB, clientRole string) (Roles, error) {
	r := Roles{Client: clientRole}
	err := db.QueryRow(ctx, `
		SELECT s.rolname::text, s.rolsuper,
			ARRAY(SELECT p FROM unnest($2::text[]) p WHERE pg_has_role(s.oid, p, 'USAGE')),
			c.oid IS NOT NULL, coalesce(c.rolsuper, false),
			CASE WHEN c.oid IS NULL THEN '{}'::text[]
				ELSE ARRAY(SELECT p FROM unnest($2::text[]) p WHERE pg_has_role(c.oid, p, 'USAGE')) END,
			CASE WHEN c.oid IS NULL THEN false ELSE pg_has_role(s.oid, c.oid, 'MEMBER') END,
			CASE WHEN c.oid IS NULL OR to_regnamespace('hafe') IS NULL THEN false
				ELSE has_schema_privilege(c.oid, 'hafe', 'USAGE') OR has_schema_privilege(c.oid, 'hafe', 'CREATE') END
		FROM pg_roles s LEFT JOIN pg_roles c ON c.rolname = $1
		WHERE s.rolname = session_user`, clientRole, serverAccessRoles).Scan(
		&r.Session, &r.SessionSuperuser, &r.SessionServer,
		&r.ClientExists, &r.ClientSuperuser, &r.ClientServer, &r.ClientMember, &r.ClientReachesHafe)
	if err != nil {
		return r, fmt.Errorf("read database roles: %w", err)
	}
	return r, nil
}

// Problems lists why a front-end must not serve clients with these roles.
// allowSuperuser accepts roles that may do anything on the database server;
// rawSQL says raw SQL is accepted, so the client role matters.
func (r Roles) Problems(allowSuperuser, rawSQL bool) []string {
	var out []string
	dangerous := func(what, role string, super bool, server []string) {
		if allowSuperuser {
			return
		}
		switch {
		case super:
			out = append(out, fmt.Sprintf("%s %q is a superuser: a client's statements could do anything on the database server (COPY … TO PROGRAM, files, other databases); use a role without SUPERUSER, or pass --allow-superuser", what, role))
		case len(server) > 0:
			out = append(out, fmt.Sprintf("%s %q has the privileges of %s: a client's statements could run programs or read and write files on the database server; revoke them, or pass --allow-superuser", what, role, strings.Join(server, ", ")))
		}
	}
	dangerous("the database role", r.Session, r.SessionSuperuser, r.SessionServer)
	if !rawSQL {
		return out
	}
	switch {
	case !r.ClientExists:
		out = append(out, fmt.Sprintf("client role %q does not exist: run hafe db install --client-role %s, or CREATE ROLE %s NOLOGIN and GRANT it to %s", r.Client, r.Client, r.Client, r.Session))
		return out
	case !r.ClientMember:
		out = append(out, fmt.Sprintf("database role %q cannot SET ROLE to client role %q: GRANT %s TO %s", r.Session, r.Client, r.Client, r.Session))
	}
	dangerous("client role", r.Client, r.ClientSuperuser, r.ClientServer)
	if r.ClientReachesHafe && !r.ClientSuperuser {
		out = append(out, fmt.Sprintf("client role %q has privileges on schema hafe, so raw SQL could change hafe's records: REVOKE ALL ON SCHEMA hafe FROM %s", r.Client, r.Client))
	}
	return out
}
