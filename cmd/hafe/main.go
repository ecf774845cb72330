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

	"hafe.dev/hafe/internal/buildinfo"
)

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
		{"agent", "carry plain HTTP clients (curl, Python, ...) over MTCP to the front-ends", runAgent},
		{"drain", "move a front-end's connections and batches to the others before it stops (admin token)", runDrain},
		{"demo", "start a throwaway cluster and show a batch surviving a front-end crash and a drain", runDemo},
		{"bench", "measure hafe against baselines", runBench},
		{"version", "print the version, VCS revision and Go version of this build", runVersion},
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `hafe - a highly available front-end for PostgreSQL

Clients send batches of transactions over HTTP; every transaction commits at
most once. Over Migratory TCP (hafe serve --mtcp-listen, hafe submit --mtcp)
a client's connection moves to another front-end when its front-end dies or
drains, and the batch goes on in the same response; over plain HTTP the
client retries with the same Idempotency-Key and another front-end resumes.

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
			if ex.err != nil {
				fmt.Fprintln(os.Stderr, "hafe:", ex.err)
			}
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

// runVersion prints what the toolchain recorded in the binary.
func runVersion(_ context.Context, args []string, stdout, _ io.Writer) error {
	if len(args) > 0 {
		return usageError{cmd: "version", err: fmt.Errorf("version takes no arguments, got %q", args)}
	}
	fmt.Fprintln(stdout, versionLine(buildinfo.Read()))
	return nil
}

// versionLine is "hafe VERSION (revision REV, built with GO)"; the
// revision part is left out when the build has none (go run, go test).
func versionLine(i buildinfo.Info) string {
	s := "hafe " + i.Version
	if r := i.ShortRevision(); r != "" {
		s += " (revision " + r
		if i.Time != "" {
			s += " of " + i.Time
		}
		s += ", " + i.Go + ")"
	} else {
		s += " (" + i.Go + ")"
	}
	return s
}

// usageError is a command line that cannot run; main prints it with a
// one-line hint, not the whole usage.
type usageError struct {
	cmd string
	err error
}

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// exitError ends the process with a status code, printing err first when
// there is one.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string {
	if e.err != nil {
		return e.err.Error()
	}
	return fmt.Sprintf("exit status %d", e.code)
}

func (e exitError) Unwrap() error { return e.err }

// newFlagSet returns a flag set whose usage names the command and its
// arguments and mentions the environment variables.
func newFlagSet(name, synopsis, about string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: hafe %s\n\n%s\n\nFlags (each also from HAFE_<NAME>, e.g. HAFE_%s):\n", synopsis, about, envName(firstFlag(fs)))
		printFlags(stderr, fs)
	}
	return fs
}

// printFlags lists fs's flags as --name, with their types, help and
// defaults.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		typ, help := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if typ != "" {
			line += " " + typ
		}
		fmt.Fprintf(w, "%s\n    \t%s", line, strings.ReplaceAll(help, "\n", "\n    \t"))
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "0s" && f.DefValue != "[]" {
			fmt.Fprintf(w, " (default %q)", f.DefValue)
		}
		fmt.Fprintln(w)
	})
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
//
// A flag that does not parse is a usageError (main prints it with a
// one-line hint); --help prints the whole usage and returns flag.ErrHelp.
func parseFlags(fs *flag.FlagSet, args []string) error {
	usage, out := fs.Usage, fs.Output()
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.Usage = usage
	fs.SetOutput(out)
	switch {
	case errors.Is(err, flag.ErrHelp):
		usage()
		return err
	case err != nil:
		// The flag package names flags with one dash; help shows two.
		msg := strings.NewReplacer("flag -", "flag --", ": -", ": --").Replace(err.Error())
		return usageError{cmd: fs.Name(), err: errors.New(msg)}
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
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
