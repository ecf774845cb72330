// Command hafe is the highly available front-end for PostgreSQL: one
// binary with subcommands. This file only wires; the work is in packages.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"serve", "run a front-end: the HTTP batch API over PostgreSQL", runServe},
		{"db", "install or upgrade hafe's back-end objects in a database", runDB},
		{"submit", "send a batch file to a front-end and stream its results", runSubmit},
		{"batches", "list and describe the cluster's batches (admin token)", runBatches},
		{"demo", "start a throwaway cluster and show a batch surviving a front-end crash", runDemo},
		{"bench", "measure hafe against baselines", runBench},
		{"version", "print the version", func(_ context.Context, _ []string, stdout, _ io.Writer) error {
			fmt.Fprintln(stdout, "hafe", version)
			return nil
		}},
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `hafe - a highly available front-end for PostgreSQL

Clients send batches of transactions over HTTP; every transaction commits at
most once, and a batch interrupted by a front-end crash resumes on another
front-end when the client retries with the same Idempotency-Key.

Usage:
  hafe <command> [flags]

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
Run "hafe <command> --help" for a command's flags. Every flag can also be set
with an environment variable HAFE_<FLAG>, e.g. HAFE_DB for --db.
`)
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		var ex exitError
		var ue usageError
		switch {
		case errors.As(err, &ue):
			fmt.Fprintf(os.Stderr, "hafe %s: %v\nRun 'hafe %s --help' for usage.\n", ue.cmd, ue.err, ue.cmd)
			os.Exit(2)
		case errors.As(err, &ex):
			os.Exit(ex.code)
		case errors.Is(err, flag.ErrHelp):
			os.Exit(0) // --help asked for the usage, which was printed
		}
		fmt.Fprintln(os.Stderr, "hafe:", err)
		os.Exit(2)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		return nil
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	usage(stderr)
	return fmt.Errorf("unknown command %q", args[0])
}

// usageError is a command line that cannot run; main prints it with a
// one-line hint, not the whole usage.
type usageError struct {
	cmd string
	err error
}

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// exitError ends the process with a status code without printing more.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// newFlagSet returns a flag set whose usage names the command and its
// arguments and mentions the environment variables.
func newFlagSet(name, synopsis, about string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: hafe %s\n\n%s\n\nFlags (each also from HAFE_<NAME>, e.g. HAFE_%s):\n", synopsis, about, envName(firstFlag(fs)))
		fs.PrintDefaults()
	}
	return fs
}

func firstFlag(fs *flag.FlagSet) string {
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	sort.Strings(names)
	if len(names) == 0 {
		return "FLAG"
	}
	return names[0]
}

func envName(flagName string) string {
	return strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(flagName))
}

// parseFlags parses args, then fills every flag not given on the command
// line from its HAFE_* environment variable.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil {
			return
		}
		if v, ok := os.LookupEnv("HAFE_" + envName(f.Name)); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("environment HAFE_%s: %w", envName(f.Name), e)
			}
		}
	})
	return err
}

// newLogger returns a logger writing to w at level ("debug", "info",
// "warn", "error") in format ("text" or "json").
func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: want text or json, not %q", format)
}

// stringList is a repeatable or comma-separated flag.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }

func (s *stringList) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*s = append(*s, p)
		}
	}
	return nil
}
