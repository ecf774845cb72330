package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"hafe.dev/hafe/client"
	"hafe.dev/hafe/frontend"
)

var listNow = time.Date(2026, 10, 27, 12, 0, 0, 0, time.UTC)

func TestBatchListTable(t *testing.T) {
	for _, c := range []struct {
		name string
		in   []client.Batch
		want string
	}{
		{"empty", nil, "no batches\n"},
		{"states and ages", []client.Batch{
			{ID: "b1", State: "running", Owner: "fe1", OwnerAlive: true, Epoch: 1, Transactions: 10, SlotsDone: 4, Committed: 3, Aborted: 1,
				CreatedAt: "2026-10-27T11:59:58.500Z", IdempotencyKey: "order-42"},
			{ID: "b2", State: "abandoned", Epoch: 3, Transactions: 2000, SlotsDone: 1999, Committed: 1999,
				CreatedAt: "2026-10-27T10:58:00.000Z"},
			{ID: "b3", State: "done", Epoch: 1, Transactions: 1, SlotsDone: 1, Committed: 1,
				CreatedAt: "2026-10-20T12:00:00.000Z", IdempotencyKey: "k"},
		}, "" +
			"BATCH  STATE      OWNER  EPOCH  DONE       COMMITTED  ABORTED  AGE    KEY\n" +
			"b1     running    fe1    1      4/10       3          1        1s     order-42\n" +
			"b2     abandoned  -      3      1999/2000  1999       0        1h02m  -\n" +
			"b3     done       -      1      1/1        1          0        7d     k\n"},
		{"unreadable time", []client.Batch{{ID: "b", State: "done", CreatedAt: "yesterday"}}, "" +
			"BATCH  STATE  OWNER  EPOCH  DONE  COMMITTED  ABORTED  AGE  KEY\n" +
			"b      done   -      0      0/0   0          0        ?    -\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := formatBatchList(&out, c.in, listNow); err != nil {
				t.Fatal(err)
			}
			if out.String() != c.want {
				t.Fatalf("got\n%s\nwant\n%s", out.String(), c.want)
			}
		})
	}
}

func TestBatchShowTable(t *testing.T) {
	base := client.Batch{ID: "b1", State: "done", Epoch: 3, Transactions: 5, SlotsDone: 5, Committed: 4, Aborted: 1,
		IdempotencyKey: "order-42", Client: "open", CreatedAt: "2026-10-27T11:50:00.000Z", UpdatedAt: "2026-10-27T11:59:30.000Z"}
	gone := base
	gone.State, gone.Owner, gone.OwnerAlive, gone.IdempotencyKey, gone.Client = "abandoned", "fe2", false, "", ""
	for _, c := range []struct {
		name string
		in   client.BatchDetail
		want string
	}{
		{"with takeovers", client.BatchDetail{BatchInfo: base, Takeovers: []client.Takeover{
			{Epoch: 2, PreviousOwner: "fe1", Owner: "fe2", FencedSessions: 1, At: "2026-10-27T11:55:00.000Z"},
			{Epoch: 3, Owner: "fe3", At: "2026-10-27T11:58:00.000Z"},
		}}, "" +
			"batch       b1\n" +
			"state       done\n" +
			"key         order-42 (client open)\n" +
			"owner       -\n" +
			"epoch       3\n" +
			"slots done  5 of 5 (4 committed, 1 aborted)\n" +
			"created     2026-10-27T11:50:00.000Z (10m00s ago)\n" +
			"updated     2026-10-27T11:59:30.000Z (30s ago)\n" +
			"takeovers\n" +
			"  EPOCH  AT                        FROM          TO   FENCED SESSIONS\n" +
			"  2      2026-10-27T11:55:00.000Z  fe1           fe2  1\n" +
			"  3      2026-10-27T11:58:00.000Z  - (released)  fe3  0\n"},
		{"owner gone, no takeovers", client.BatchDetail{BatchInfo: gone}, "" +
			"batch       b1\n" +
			"state       abandoned\n" +
			"key         -\n" +
			"owner       fe2 (gone)\n" +
			"epoch       3\n" +
			"slots done  5 of 5 (4 committed, 1 aborted)\n" +
			"created     2026-10-27T11:50:00.000Z (10m00s ago)\n" +
			"updated     2026-10-27T11:59:30.000Z (30s ago)\n" +
			"takeovers\tnone\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := formatBatch(&out, c.in, listNow); err != nil {
				t.Fatal(err)
			}
			if out.String() != c.want {
				t.Fatalf("got\n%s\nwant\n%s", out.String(), c.want)
			}
		})
	}
}

// hafe batches ls and show against a real front-end and database.
func TestBatchesCommandReadsTheAdminAPI(t *testing.T) {
	url := startBankFrontEndWith(t, frontend.Config{ID: "fe1", AdminToken: "adm"})
	bin := buildHafe(t)
	r := runSubmitBinary(t, bin, `{"transactions":[{"template":"balance","args":{"id":1}}]}`, "-", "--to", url, "--idempotency-key", "ls-1", "--quiet")
	if r.code != 0 {
		t.Fatalf("submit: %d %s", r.code, r.stderr)
	}
	ctx := context.Background()
	run := func(args ...string) (string, error) {
		var out, errOut bytes.Buffer
		err := runBatches(ctx, append(args, "--to", url, "--admin-token", "adm"), &out, &errOut)
		return out.String(), err
	}
	out, err := run("ls", "--state", "done")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "BATCH ") || !strings.Contains(lines[1], " done ") || !strings.HasSuffix(lines[1], " ls-1") {
		t.Fatalf("ls:\n%s", out)
	}
	id := strings.Fields(lines[1])[0]
	out, err = run("show", id)
	if err != nil || !strings.Contains(out, "slots done  1 of 1 (1 committed, 0 aborted)") || !strings.Contains(out, "key         ls-1 (client open)") {
		t.Fatalf("show: %v\n%s", err, out)
	}
	out, err = run("show", id, "--json")
	var detail client.BatchDetail
	if err != nil || json.Unmarshal([]byte(out), &detail) != nil || detail.ID != id || len(detail.Outcomes) != 1 {
		t.Fatalf("show --json: %v\n%s", err, out)
	}
	if out, _ := run("ls", "--state", "running"); out != "no batches\n" {
		t.Fatalf("ls --state running:\n%s", out)
	}

	var api *client.APIError
	if _, err := run("ls", "--state", "lost"); !errors.As(err, &api) || api.Code != "bad_filter" {
		t.Fatalf("bad state: %v", err)
	}
	var ue usageError
	for _, args := range [][]string{{}, {"rm"}, {"show"}, {"ls", "extra"}} {
		if _, err := run(args...); !errors.As(err, &ue) {
			t.Errorf("batches %v: %v, want a usage error", args, err)
		}
	}
	var out2, errOut bytes.Buffer
	err = runBatches(ctx, []string{"ls", "--to", url, "--admin-token", "wrong"}, &out2, &errOut)
	if !errors.As(err, &api) || api.Status != 401 {
		t.Fatalf("wrong token: %v", err)
	}
}
