package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"text/tabwriter"
	"time"

	"hafe.dev/hafe/client"
)

const batchesAbout = `Lists and describes batches for operators, from any front-end's admin
routes (they answer for the whole cluster).

  hafe batches ls   [--state running|done|abandoned] [--owner ID] [--older-than 1h] [--key KEY] [--limit N]
  hafe batches show BATCH_ID

A batch is running while its owner's run heartbeats, abandoned when
unfinished and no live front-end holds it (the client's next retry with its
Idempotency-Key resumes it), done when every transaction has its outcome.`

func runBatches(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("batches", "batches ls|show [ID] --to URL --admin-token T [flags]", batchesAbout, stderr)
	to := fs.String("to", "http://127.0.0.1:8080", "a front-end's URL (http://host:port, https://host:port or host:port)")
	token := fs.String("admin-token", "", "the front-ends' --admin-token")
	ca := fs.String("ca", "", caFlagHelp)
	state := fs.String("state", "", "ls: only batches in this state: running, done or abandoned")
	owner := fs.String("owner", "", "ls: only batches held by this front-end id")
	olderThan := fs.Duration("older-than", 0, "ls: only batches created longer ago than this, e.g. 10m")
	key := fs.String("key", "", "ls: only batches with this Idempotency-Key")
	limit := fs.Int("limit", 50, "ls: at most this many, most recently changed first (1 to 1000)")
	asJSON := fs.Bool("json", false, "print the admin API's JSON instead of a table")
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(rest) == 0 {
		return usageError{cmd: "batches", err: errors.New("say ls or show")}
	}
	tc, err := clientTLSConfig(*ca)
	if err != nil {
		return usageError{cmd: "batches", err: err}
	}
	admin, err := client.NewAdmin(*to, *token, adminHTTPClient(tc))
	if err != nil {
		return err
	}
	switch rest[0] {
	case "ls", "list":
		if len(rest) != 1 {
			return usageError{cmd: "batches", err: fmt.Errorf("ls takes no arguments, got %q", rest[1:])}
		}
		bs, err := admin.Batches(ctx, client.BatchFilter{State: *state, Owner: *owner, OlderThan: *olderThan, Key: *key, Limit: *limit})
		if err != nil {
			return caHint(err)
		}
		if *asJSON {
			return writeIndented(stdout, bs)
		}
		return formatBatchList(stdout, bs, time.Now())
	case "show":
		if len(rest) != 2 {
			return usageError{cmd: "batches", err: errors.New("show takes one batch id")}
		}
		b, err := admin.Batch(ctx, rest[1])
		if err != nil {
			return caHint(err)
		}
		if *asJSON {
			return writeIndented(stdout, b)
		}
		return formatBatch(stdout, b, time.Now())
	default:
		return usageError{cmd: "batches", err: fmt.Errorf("unknown subcommand %q (want ls or show)", rest[0])}
	}
}

func writeIndented(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// formatBatchList writes one line per batch under a header.
func formatBatchList(w io.Writer, bs []client.Batch, now time.Time) error {
	if len(bs) == 0 {
		_, err := fmt.Fprintln(w, "no batches")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "BATCH\tSTATE\tOWNER\tEPOCH\tDONE\tCOMMITTED\tABORTED\tAGE\tKEY")
	for _, b := range bs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d/%d\t%d\t%d\t%s\t%s\n",
			b.ID, b.State, dash(b.Owner), b.Epoch, b.SlotsDone, b.Transactions, b.Committed, b.Aborted, age(b.CreatedAt, now), dash(b.IdempotencyKey))
	}
	return tw.Flush()
}

// formatBatch writes a batch's fields, then its takeovers as a table.
func formatBatch(w io.Writer, b client.BatchDetail, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	owner := dash(b.Owner)
	if b.Owner != "" && !b.OwnerAlive {
		owner += " (gone)"
	}
	key := dash(b.IdempotencyKey)
	if b.Client != "" {
		key += " (client " + b.Client + ")"
	}
	fmt.Fprintf(tw, "batch\t%s\n", b.ID)
	fmt.Fprintf(tw, "state\t%s\n", b.State)
	fmt.Fprintf(tw, "key\t%s\n", key)
	fmt.Fprintf(tw, "owner\t%s\n", owner)
	fmt.Fprintf(tw, "epoch\t%d\n", b.Epoch)
	fmt.Fprintf(tw, "slots done\t%d of %d (%d committed, %d aborted)\n", b.SlotsDone, b.Transactions, b.Committed, b.Aborted)
	fmt.Fprintf(tw, "created\t%s (%s ago)\n", b.CreatedAt, age(b.CreatedAt, now))
	fmt.Fprintf(tw, "updated\t%s (%s ago)\n", b.UpdatedAt, age(b.UpdatedAt, now))
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(b.Takeovers) == 0 {
		_, err := fmt.Fprintln(w, "takeovers\tnone")
		return err
	}
	fmt.Fprintln(w, "takeovers")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  EPOCH\tAT\tFROM\tTO\tFENCED SESSIONS")
	for _, t := range b.Takeovers {
		from := t.PreviousOwner
		if from == "" {
			from = "- (released)"
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%d\n", t.Epoch, t.At, from, t.Owner, t.FencedSessions)
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// age says how long before now an admin API time was, to the second.
func age(ts string, now time.Time) string {
	t, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		return "?"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return strconv.Itoa(int(d.Seconds())) + "s"
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}
