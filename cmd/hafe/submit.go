package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"hafe.dev/hafe/client"
	"hafe.dev/hafe/mtcp"
)

func runSubmit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("submit", "submit FILE --to URL[,URL...] [--idempotency-key K] [--token T] [--quiet]",
		`Sends the batch in FILE ("-" for standard input), a JSON object
{"transactions":[{"template":"transfer","args":{"from":1,"to":2,"amount":10}}, …]},
and writes the response lines to standard output as they arrive (NDJSON, one
line per transaction, then the summary line), so the output composes with jq.
Progress and a summary go to standard error.

If a front-end dies or refuses for now (409, 503) the batch is sent again,
with the same Idempotency-Key and body, to the next front-end of --to; the new
front-end resumes it without running any committed transaction twice, and
lines already written are not written again. A front-end that refuses the
token (401, 403) is left for the others, and one that refuses connections is
skipped while another answers; each retry says on standard error what it
means for the batch (a takeover wait, a resume, a refusal).

Exit status:
  0  every transaction committed
  1  the batch completed, and some transactions aborted
  2  usage: bad flags, no --to, an unreadable or malformed FILE
  3  refused: a front-end answered 4xx (bad request, unknown template, key
     reused with another body; a wrong token from every front-end), or no
     front-end's TLS certificate verified with --ca: sending it again will
     not help
  4  incomplete: front-ends unreachable or busy until --max-attempts or
     --timeout ran out; the batch is resumable, and standard error says how
     (same FILE, same --idempotency-key)
  5  the front-ends' answers broke continuity (a replayed line differed):
     report it

Example:
  hafe submit sql/demo/transfers.json --to 127.0.0.1:8080,127.0.0.1:8081 | jq -c 'select(.status=="aborted")'`, stderr)
	var to stringList
	fs.Var(&to, "to", "front-end URLs, e.g. http://10.0.0.7:8080, https://fe1.example:8443 or host:port; retries go round-robin (required; repeatable or comma-separated)")
	key := fs.String("idempotency-key", "", "names the batch across retries; reuse it to resume an interrupted submit (default: a random key, printed in the summary)")
	token := fs.String("token", "", "bearer token for the front-ends' /v1 routes")
	quiet := fs.Bool("quiet", false, "no progress or summary on standard error, only errors")
	attempts := fs.Int("max-attempts", 10, "give up after this many requests")
	timeout := fs.Duration("timeout", 0, "give up after this long (0: no limit)")
	ca := fs.String("ca", "", caFlagHelp+"; with --mtcp, it makes the MTCP paths TLS")
	overMTCP := fs.Bool("mtcp", false, "send over Migratory TCP: --to names the front-ends' --mtcp-listen addresses, and the connection moves to another front-end in the middle of the batch when its front-end dies or drains, with no second request; each move is printed on standard error")
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return usageError{cmd: "submit", err: errors.New("give one batch FILE (or - for standard input)")}
	}
	if len(to) == 0 {
		return usageError{cmd: "submit", err: errors.New("--to is required")}
	}
	file := rest[0]
	body, n, err := readBatchFile(file)
	if err != nil {
		return usageError{cmd: "submit", err: err}
	}

	tc, err := clientTLSConfig(*ca)
	if err != nil {
		return usageError{cmd: "submit", err: err}
	}
	p := newProgress(stderr, n, *quiet)
	cfg := client.Config{FrontEnds: to, Token: *token, TLSConfig: tc, MaxAttempts: *attempts, Observe: p.event}
	if *overMTCP {
		cfg.MTCP = &mtcp.Dialer{OnMigration: func(s mtcp.MigrationStats) {
			if !*quiet {
				fmt.Fprintln(stderr, describeMigration(s))
			}
		}}
	}
	c, err := client.New(cfg)
	if err != nil {
		return err
	}
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	start := time.Now()
	sum, err := c.Submit(ctx, client.Request{Body: body, IdempotencyKey: *key, OnLine: func(l client.Line) error {
		if _, err := stdout.Write(append(l.Bytes, '\n')); err != nil {
			return fmt.Errorf("write results: %w", err)
		}
		p.line(l)
		return nil
	}})
	p.finish(sum, time.Since(start))
	if err != nil {
		// A refusal or a broken guarantee will not go away on resubmit;
		// running out of attempts or time may.
		var api *client.APIError
		switch {
		case errors.Is(err, client.ErrIncomplete) || ctx.Err() != nil:
			fmt.Fprintf(stderr, "hafe: incomplete: %d of %d transactions reported; resume with: hafe submit %s --to %s --idempotency-key %s\n",
				sum.Transactions, n, file, strings.Join(to, ","), sum.IdempotencyKey)
			return exitError{code: 4, err: err}
		case errors.Is(err, client.ErrContinuity):
			return exitError{code: 5, err: err}
		case errors.Is(err, client.ErrCertificate):
			return exitError{code: 3, err: caHint(err)}
		case errors.As(err, &api) && !api.Retryable():
			return exitError{code: 3, err: err}
		}
		return err
	}
	if sum.Aborted > 0 {
		return exitError{code: 1}
	}
	return nil
}

// describeMigration is one line on a client's migration.
func describeMigration(s mtcp.MigrationStats) string {
	if s.Err != nil {
		return fmt.Sprintf("hafe: connection could not move from %s to %s (%s): %v", s.From, s.To, s.Trigger, s.Err)
	}
	return fmt.Sprintf("hafe: connection moved from %s to %s (%s): initiate %dµs, wait %dµs, complete %dµs; the batch goes on, no new request",
		s.From, s.To, s.Trigger, s.Initiate.Microseconds(), s.Wait.Microseconds(), s.Complete.Microseconds())
}

// readBatchFile reads a batch and counts its transactions; the bytes are
// sent as they are.
func readBatchFile(file string) ([]byte, int, error) {
	var body []byte
	var err error
	if file == "-" {
		body, err = io.ReadAll(os.Stdin)
	} else {
		body, err = os.ReadFile(file)
	}
	if err != nil {
		return nil, 0, err
	}
	var b struct {
		Transactions []json.RawMessage `json:"transactions"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return nil, 0, fmt.Errorf("%s is not a batch: %w", file, err)
	}
	if len(b.Transactions) == 0 {
		return nil, 0, fmt.Errorf(`%s has no "transactions"`, file)
	}
	return bytes.TrimSpace(body), len(b.Transactions), nil
}

// parseInterspersed parses flags given before and after the positional
// arguments ("submit FILE --to URL" as well as "submit --to URL FILE"),
// then fills the rest from HAFE_* variables, and returns the positionals.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			continue // Parse reports it
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			continue
		}
		if i+1 < len(args) {
			i++
			flags = append(flags, args[i])
		}
	}
	if err := parseFlags(fs, append(flags, append([]string{"--"}, pos...)...)); err != nil {
		return nil, err
	}
	return fs.Args(), nil
}

// progress shows a batch's progress on standard error: a bar redrawn in
// place on a terminal, a plain line now and then otherwise. It is called
// from Submit's goroutine only.
type progress struct {
	w        io.Writer
	total    int
	quiet    bool
	terminal bool
	every    time.Duration

	received, committed, aborted int
	frontEnd                     string
	last                         time.Time
	drawn                        bool // a bar is on the terminal's last line
}

func newProgress(w io.Writer, total int, quiet bool) *progress {
	p := &progress{w: w, total: total, quiet: quiet, terminal: isTerminal(w), every: 2 * time.Second}
	if p.terminal {
		p.every = 100 * time.Millisecond
	}
	return p
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func (p *progress) line(l client.Line) {
	if l.Done {
		return
	}
	p.received++
	if l.Status == "aborted" {
		p.aborted++
	} else {
		p.committed++
	}
	p.frontEnd = l.FrontEnd
	if p.quiet || (time.Since(p.last) < p.every && p.received != p.total) {
		return
	}
	p.last = time.Now()
	p.show()
}

func (p *progress) show() {
	if p.terminal {
		const width = 30
		filled := 0
		if p.total > 0 {
			filled = min(width*p.received/p.total, width)
		}
		fmt.Fprintf(p.w, "\r\033[K[%s%s] %d/%d  committed %d  aborted %d  via %s",
			strings.Repeat("#", filled), strings.Repeat("-", width-filled), p.received, p.total, p.committed, p.aborted, p.frontEnd)
		p.drawn = true
		return
	}
	fmt.Fprintf(p.w, "progress: %d/%d transactions (%d committed, %d aborted) via %s\n", p.received, p.total, p.committed, p.aborted, p.frontEnd)
}

// say prints a message on its own line, under the bar.
func (p *progress) say(format string, args ...any) {
	if p.quiet {
		return
	}
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
		p.drawn = false
	}
	fmt.Fprintf(p.w, format+"\n", args...)
	if p.terminal && p.received > 0 {
		p.show()
	}
}

func (p *progress) event(e client.Event) {
	switch e.Kind {
	case client.EventStream:
		if e.Attempt > 1 || e.Resumed {
			p.say("%s is streaming batch %s (resumed: %v)", e.FrontEnd, e.BatchID, e.Resumed)
		}
	case client.EventReplayed:
		p.say("%s replayed %d lines, identical to those already received; not repeated", e.FrontEnd, e.Replayed)
	case client.EventRetry:
		p.say("%s", retryMessage(e))
	}
}

// retryMessage says what a failed attempt means for the batch and what
// happens next, in the terms of a takeover: who may still own the batch,
// when another front-end can take it over, where the client goes next.
func retryMessage(e client.Event) string {
	next := fmt.Sprintf("retrying on %s in %v", e.Next, e.Wait.Round(time.Millisecond))
	var api *client.APIError
	var stream *client.StreamError
	switch {
	case errors.As(e.Err, &api) && api.Code == "batch_in_progress":
		return fmt.Sprintf("attempt %d: %s says the batch is still owned by a front-end that may be alive (%s); "+
			"it can be taken over once that owner has missed its heartbeats - %s, with the same key", e.Attempt, e.URL, api.Message, next)
	case errors.As(e.Err, &api) && (api.Status == 401 || api.Status == 403):
		return fmt.Sprintf("attempt %d: %s refused the token (%s); trying the other front-ends: %s", e.Attempt, e.URL, api.Code, next)
	case errors.As(e.Err, &stream) && stream.NoResponse:
		return fmt.Sprintf("attempt %d: %s did not answer (%v); %s with the same key, which resumes the batch where it stopped", e.Attempt, e.URL, stream.Err, next)
	case errors.As(e.Err, &stream):
		return fmt.Sprintf("attempt %d: the stream from %s broke after %d lines this attempt; %s with the same key: the next front-end reports what is done and runs the rest", e.Attempt, e.URL, stream.Lines, next)
	}
	return fmt.Sprintf("attempt %d failed: %v; %s", e.Attempt, e.Err, next)
}

func (p *progress) finish(s client.Summary, took time.Duration) {
	if p.quiet || s.Attempts == 0 {
		return
	}
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
		p.drawn = false
	}
	if !s.Done && s.BatchID == "" {
		return // refused before anything ran; the error says why
	}
	state := "done"
	if !s.Done {
		state = "INCOMPLETE"
	}
	fes := strings.Join(s.FrontEnds, " -> ")
	if fes == "" {
		fes = "none"
	}
	fmt.Fprintf(p.w, "%s: %d/%d transactions: %d committed, %d aborted; attempts %d (retries %d); front-ends: %s; batch %s; key %s; %v\n",
		state, s.Transactions, p.total, s.Committed, s.Aborted, s.Attempts, s.Retries(), fes, s.BatchID, s.IdempotencyKey, took.Round(time.Millisecond))
}
