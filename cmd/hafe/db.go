package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	backendext "hafe.dev/hafe/backend-ext"
)

func runDB(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stderr, `Usage: hafe db <command> [flags]

Commands:
  install        create or upgrade hafe's objects in a database: CREATE EXTENSION
                 hafe where the extension files are installed on the server,
                 otherwise the same SQL as a plain schema "hafe"; idempotent
  install-files  copy the extension files (hafe.control, hafe--*.sql) into a
                 PostgreSQL server's extension directory
`)
		if len(args) == 0 {
			return errors.New("db: a command is needed")
		}
		return nil
	}
	switch args[0] {
	case "install":
		return runDBInstall(ctx, args[1:], stdout, stderr)
	case "install-files":
		return runDBInstallFiles(ctx, args[1:], stdout, stderr)
	}
	return fmt.Errorf("db: unknown command %q (want install or install-files)", args[0])
}

func runDBInstall(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("db install", "db install --db URL [--schema-only] [--version V]",
		"Creates or upgrades hafe's tables and functions in the database.", stderr)
	db := fs.String("db", "", "PostgreSQL URL (required); a multi-host one (postgres://h1,h2/app) installs on whichever host is the primary")
	schemaOnly := fs.Bool("schema-only", false, "apply the SQL as a plain schema even where CREATE EXTENSION would work")
	version := fs.String("version", backendext.DefaultVersion, "target version")
	clientRole := fs.String("client-role", backendext.DefaultClientRole, "role raw SQL sessions log in as: created NOLOGIN if missing (give it LOGIN and a password yourself: ALTER ROLE … LOGIN PASSWORD '…'), granted USAGE on schema hafe and EXECUTE on hafe.record_outcome and nothing else of hafe's, and granted to the installing role so that fencing may end its sessions")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *db == "" {
		fs.Usage()
		return errors.New("--db is required")
	}
	cfg, err := pgx.ParseConfig(*db)
	if err != nil {
		return fmt.Errorf("--db: %w", err)
	}
	// With a multi-host URL: the primary, never a standby.
	backendext.RequireWritable(&cfg.Config)
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	res, err := backendext.Install(ctx, conn, backendext.InstallOptions{ForceSchema: *schemaOnly, Version: *version, ClientRole: *clientRole}, nil)
	if err != nil {
		return err
	}
	switch {
	case res.From == res.To:
		fmt.Fprintf(stdout, "hafe %s already installed (%s)\n", res.To, res.Mode)
	case res.From == "":
		fmt.Fprintf(stdout, "hafe %s installed (%s)\n", res.To, res.Mode)
	default:
		fmt.Fprintf(stdout, "hafe upgraded from %s to %s (%s)\n", res.From, res.To, res.Mode)
	}
	return nil
}

func installWithPool(ctx context.Context, pool *pgxpool.Pool, clientRole string, log *slog.Logger) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	defer conn.Release()
	_, err = backendext.Install(ctx, conn.Conn(), backendext.InstallOptions{ClientRole: clientRole}, log)
	return err
}

func runDBInstallFiles(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("db install-files", "db install-files [--dir DIR]",
		"Copies the extension files into a PostgreSQL server's extension directory,\nso that CREATE EXTENSION hafe works there.", stderr)
	dir := fs.String("dir", "", "extension directory (default: `pg_config --sharedir`/extension)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		out, err := exec.CommandContext(ctx, "pg_config", "--sharedir").Output()
		if err != nil {
			return errors.New("pg_config not found: give --dir (e.g. /usr/share/postgresql/15/extension)")
		}
		*dir = filepath.Join(strings.TrimSpace(string(out)), "extension")
	}
	files, err := backendext.WriteExtensionFiles(*dir)
	if err != nil {
		return err
	}
	for _, f := range files {
		fmt.Fprintln(stdout, "wrote", f)
	}
	return nil
}
