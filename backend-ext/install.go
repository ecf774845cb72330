package backendext

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

//go:embed extension/hafe.control extension/*.sql
var extensionFiles embed.FS

// Schema is the schema that holds hafe's tables in both install modes.
const Schema = "hafe"

// Install modes.
const (
	ModeExtension = "extension" // CREATE EXTENSION hafe, files installed on the server
	ModeSchema    = "schema"    // the same SQL applied as a plain schema
)

// DefaultVersion is the version an install or upgrade brings a database to.
var DefaultVersion = mustDefaultVersion()

// DefaultClientRole is the role clients' raw SQL runs as unless
// configured otherwise.
const DefaultClientRole = "hafe_client"

// InstallOptions tunes Install.
type InstallOptions struct {
	// ForceSchema applies the SQL as a plain schema even where the
	// extension files are installed on the server.
	ForceSchema bool
	// Version is the target version; default DefaultVersion.
	Version string
	// ClientRole is the role raw SQL sessions log in as (default
	// DefaultClientRole). Install creates it NOLOGIN if it does not exist
	// (an administrator gives it LOGIN and a password: Install never
	// handles passwords), grants it USAGE on schema hafe and EXECUTE on
	// hafe.record_outcome and nothing else of hafe's, and makes the
	// installing role a member, so that a front-end connecting as that
	// role may terminate client sessions when it fences a batch.
	ClientRole string
}

// InstallResult says what Install did.
type InstallResult struct {
	Mode string // ModeExtension or ModeSchema
	From string // version found before, "" on a fresh install
	To   string // version after
}

// Install creates the hafe schema objects in the connected database, or
// upgrades them to the target version. It is idempotent and safe to run
// from several processes at once (an advisory lock serialises them).
func Install(ctx context.Context, conn *pgx.Conn, opts InstallOptions, log *slog.Logger) (InstallResult, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	target := opts.Version
	if target == "" {
		target = DefaultVersion
	}
	if _, err := upgradePath("", target); err != nil {
		return InstallResult{}, err
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return InstallResult{}, fmt.Errorf("install hafe: %w", err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext('hafe install'))"); err != nil {
		return InstallResult{}, fmt.Errorf("install hafe: lock: %w", err)
	}
	res, err := install(ctx, tx, opts.ForceSchema, target)
	if err != nil {
		return res, fmt.Errorf("install hafe %s: %w", target, err)
	}
	role := opts.ClientRole
	if role == "" {
		role = DefaultClientRole
	}
	if err := ensureClientRole(ctx, tx, role); err != nil {
		return res, fmt.Errorf("install hafe: client role %s: %w", role, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return res, fmt.Errorf("install hafe: commit: %w", err)
	}
	log.Info("hafe back-end installed", "mode", res.Mode, "from", res.From, "to", res.To)
	return res, nil
}

// ensureClientRole creates role (NOLOGIN) unless it exists, makes the
// current role a member, and lets role call hafe.record_outcome, the one
// thing of schema hafe it may use. Roles belong to the whole server, so
// installs into two databases may race to create it: the loser finds it
// made.
func ensureClientRole(ctx context.Context, tx pgx.Tx, role string) error {
	ident := pgx.Identifier{role}.Sanitize()
	var exists, member bool
	if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", role).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		if err := ignoringDuplicates(ctx, tx, "CREATE ROLE "+ident+" NOLOGIN"); err != nil {
			return fmt.Errorf("create it (or have an administrator run CREATE ROLE %s NOLOGIN; GRANT %s TO <front-end role>): %w", ident, ident, err)
		}
	}
	if err := tx.QueryRow(ctx, "SELECT pg_has_role(current_user, $1, 'MEMBER')", role).Scan(&member); err != nil {
		return err
	}
	if !member {
		if err := ignoringDuplicates(ctx, tx, "GRANT "+ident+" TO CURRENT_USER"); err != nil {
			return fmt.Errorf("grant it to the front-end role (or have an administrator run GRANT %s TO <front-end role>): %w", ident, err)
		}
	}
	var recordOutcome bool
	if err := tx.QueryRow(ctx, "SELECT to_regprocedure($1) IS NOT NULL", recordOutcomeSignature).Scan(&recordOutcome); err != nil {
		return err
	}
	if recordOutcome {
		if _, err := tx.Exec(ctx, "GRANT USAGE ON SCHEMA hafe TO "+ident+"; GRANT EXECUTE ON FUNCTION "+recordOutcomeSignature+" TO "+ident); err != nil {
			return fmt.Errorf("grant it hafe.record_outcome: %w", err)
		}
	}
	return nil
}

// recordOutcomeSignature names hafe.record_outcome for GRANT and checks.
const recordOutcomeSignature = "hafe.record_outcome(uuid, integer, text, text, bigint, text, integer, bytea)"

// ignoringDuplicates runs sql in a savepoint and ignores its failure if
// what it makes was made meanwhile by another transaction.
func ignoringDuplicates(ctx context.Context, tx pgx.Tx, sql string) error {
	sp, err := tx.Begin(ctx)
	if err != nil {
		return err
	}
	if _, err := sp.Exec(ctx, sql); err != nil {
		sp.Rollback(ctx)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (pgErr.Code == "23505" || pgErr.Code == "42710") {
			return nil
		}
		return err
	}
	return sp.Commit(ctx)
}

func install(ctx context.Context, tx pgx.Tx, forceSchema bool, target string) (InstallResult, error) {
	var extVersion string
	err := tx.QueryRow(ctx, "SELECT extversion FROM pg_extension WHERE extname = 'hafe'").Scan(&extVersion)
	switch {
	case err == nil:
		res := InstallResult{Mode: ModeExtension, From: extVersion, To: extVersion}
		if extVersion != target {
			if _, err := tx.Exec(ctx, "ALTER EXTENSION hafe UPDATE TO "+quoteLiteral(target)); err != nil {
				return res, fmt.Errorf("alter extension: %w", err)
			}
			res.To = target
		}
		return res, nil
	case !errors.Is(err, pgx.ErrNoRows):
		return InstallResult{}, err
	}

	schemaVersion, err := readSchemaVersion(ctx, tx)
	if err != nil {
		return InstallResult{}, err
	}
	if schemaVersion == "" && !forceSchema {
		var available bool
		err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_available_extension_versions WHERE name = 'hafe' AND version = $1)", target).Scan(&available)
		if err != nil {
			return InstallResult{}, err
		}
		if available {
			if _, err := tx.Exec(ctx, "CREATE EXTENSION hafe VERSION "+quoteLiteral(target)); err != nil {
				return InstallResult{}, fmt.Errorf("create extension: %w", err)
			}
			return InstallResult{Mode: ModeExtension, To: target}, nil
		}
	}
	return applySchema(ctx, tx, schemaVersion, target)
}

// applySchema runs the extension scripts as plain SQL in schema hafe, in
// upgrade order, and records the version reached.
func applySchema(ctx context.Context, tx pgx.Tx, from, target string) (InstallResult, error) {
	res := InstallResult{Mode: ModeSchema, From: from, To: from}
	if from == target {
		return res, nil
	}
	scripts, err := upgradePath(from, target)
	if err != nil {
		return res, err
	}
	if from == "" {
		if _, err := tx.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS hafe;
			CREATE TABLE hafe.schema_version (version text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
			return res, fmt.Errorf("create schema: %w", err)
		}
	}
	if _, err := tx.Exec(ctx, "SET LOCAL search_path = hafe, pg_catalog"); err != nil {
		return res, err
	}
	for _, name := range scripts {
		body, err := schemaScript(name)
		if err != nil {
			return res, err
		}
		if _, err := tx.Exec(ctx, body); err != nil {
			return res, fmt.Errorf("apply %s: %w", name, err)
		}
	}
	if _, err := tx.Exec(ctx, "INSERT INTO hafe.schema_version (version) VALUES ($1)", target); err != nil {
		return res, err
	}
	if _, err := tx.Exec(ctx, "RESET search_path"); err != nil {
		return res, err
	}
	res.To = target
	return res, nil
}

func readSchemaVersion(ctx context.Context, tx pgx.Tx) (string, error) {
	var exists bool
	if err := tx.QueryRow(ctx, "SELECT to_regclass('hafe.schema_version') IS NOT NULL").Scan(&exists); err != nil {
		return "", err
	}
	if !exists {
		return "", nil
	}
	var v string
	err := tx.QueryRow(ctx, "SELECT version FROM hafe.schema_version ORDER BY applied_at DESC, version DESC LIMIT 1").Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	return v, err
}

var scriptName = regexp.MustCompile(`^hafe--([0-9.]+)(?:--([0-9.]+))?\.sql$`)

// upgradePath lists the scripts that bring a database from version from
// ("" for nothing installed) to version to: a base script, then updates.
func upgradePath(from, to string) ([]string, error) {
	entries, err := fs.ReadDir(extensionFiles, "extension")
	if err != nil {
		return nil, err
	}
	bases := map[string]bool{}
	updates := map[string]string{} // from version -> to version
	for _, e := range entries {
		m := scriptName.FindStringSubmatch(e.Name())
		switch {
		case m == nil:
		case m[2] == "":
			bases[m[1]] = true
		default:
			updates[m[1]] = m[2]
		}
	}
	var path []string
	cur := from
	if cur == "" {
		// Start from the newest base script not past the target.
		var vs []string
		for v := range bases {
			if compareVersions(v, to) <= 0 {
				vs = append(vs, v)
			}
		}
		if len(vs) == 0 {
			return nil, fmt.Errorf("no install script for version %s", to)
		}
		sort.Slice(vs, func(i, j int) bool { return compareVersions(vs[i], vs[j]) > 0 })
		cur = vs[0]
		path = append(path, "hafe--"+cur+".sql")
	}
	for cur != to {
		next, ok := updates[cur]
		if !ok || compareVersions(next, to) > 0 {
			return nil, fmt.Errorf("no upgrade path from version %s to %s", cur, to)
		}
		path = append(path, "hafe--"+cur+"--"+next+".sql")
		cur = next
	}
	return path, nil
}

// schemaScript returns an extension script made fit to run as plain SQL.
func schemaScript(name string) (string, error) {
	b, err := extensionFiles.ReadFile("extension/" + name)
	if err != nil {
		return "", err
	}
	var out strings.Builder
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if strings.HasPrefix(line, `\echo`) {
			continue
		}
		out.WriteString(strings.ReplaceAll(line, "@extschema@", Schema))
	}
	return out.String(), nil
}

func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) || i < len(bs); i++ {
		var x, y int
		if i < len(as) {
			fmt.Sscan(as[i], &x)
		}
		if i < len(bs) {
			fmt.Sscan(bs[i], &y)
		}
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	return 0
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func mustDefaultVersion() string {
	b, err := extensionFiles.ReadFile("extension/hafe.control")
	if err != nil {
		panic(err)
	}
	m := regexp.MustCompile(`(?m)^default_version\s*=\s*'([^']+)'`).FindSubmatch(b)
	if m == nil {
		panic("hafe.control has no default_version")
	}
	return string(m[1])
}

// WriteExtensionFiles copies the control file and SQL scripts into dir, the
// server's extension directory (`pg_config --sharedir`/extension), so that
// CREATE EXTENSION hafe works there.
func WriteExtensionFiles(dir string) ([]string, error) {
	entries, err := fs.ReadDir(extensionFiles, "extension")
	if err != nil {
		return nil, err
	}
	var written []string
	for _, e := range entries {
		b, err := extensionFiles.ReadFile("extension/" + e.Name())
		if err != nil {
			return written, err
		}
		p := filepath.Join(dir, e.Name())
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return written, fmt.Errorf("write extension file: %w", err)
		}
		written = append(written, p)
	}
	return written, nil
}
