package demo

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"hafe.dev/hafe/client"
	"hafe.dev/hafe/mtcp"
)

// writeClusterKey writes a fresh random --cluster-key-file.
func writeClusterKey(path string) error {
	key := make([]byte, 32)
	rand.Read(key)
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	return nil
}

// submitMTCP sends the batch over MTCP to fe1 in one request, kills the
// front-end serving it at line killAt and drains the next one at line
// drainAt; the connection moves each time and the stream goes on.
func (d *demo) submitMTCP(ctx context.Context, body []byte, n, killAt, drainAt int) (*submitted, error) {
	res := &submitted{status: map[int]string{}, lines: map[int]string{}}
	byAddr := map[string]string{}
	var servers []string
	for _, id := range []string{"fe1", "fe2", "fe3"} {
		c := d.children[id]
		byAddr[c.mtcp] = id
		servers = append(servers, c.mtcp)
	}
	var (
		mu         sync.Mutex
		serving    = "fe1"
		redirected bool // a move the serving front-end asked for
	)
	name := func(addr string) string {
		if id, ok := byAddr[addr]; ok {
			return id
		}
		return addr
	}
	dialer := &mtcp.Dialer{Servers: servers, OnMigration: func(s mtcp.MigrationStats) {
		if s.Err != nil {
			d.say("the connection could not move to %s (%v); trying another front-end", name(s.To), s.Err)
			return
		}
		mu.Lock()
		serving = name(s.To)
		redirected = redirected || s.Trigger == mtcp.TriggerRedirect
		mu.Unlock()
		why := map[string]string{
			mtcp.TriggerPathFailure: "its path broke",
			mtcp.TriggerRedirect:    "the front-end asked it to move",
		}[s.Trigger]
		if why == "" {
			why = s.Trigger
		}
		d.say("the connection moved %s -> %s (%s): initiate %dµs, wait %dµs, complete %dµs",
			name(s.From), name(s.To), why, s.Initiate.Microseconds(), s.Wait.Microseconds(), s.Complete.Microseconds())
	}}
	c, err := client.New(client.Config{FrontEnds: servers[:1], MTCP: dialer, MaxAttempts: 1})
	if err != nil {
		return nil, err
	}
	defer c.CloseIdleConnections()
	var (
		drained    *child // the front-end told to drain
		event      string // what happened to the serving front-end, awaiting the next line
		eventTime  time.Time
		drainTime  time.Time
		firstAbort = true
		begin      = time.Now()
	)
	d.say("submitting %d transfers to fe1 over MTCP (%s), one request", n, servers[0])
	sum, err := c.Submit(ctx, client.Request{Body: body, OnLine: func(l client.Line) error {
		if l.Done {
			d.say("summary line: %s", l.Bytes)
			return nil
		}
		res.status[l.Seq] = l.Status
		res.lines[l.Seq] = string(l.Bytes)
		mu.Lock()
		now := serving
		mu.Unlock()
		switch {
		case event == "drain" && drained != nil && now == drained.id:
			// The drained front-end goes on until the client has moved;
			// a short rest of the batch may end there first.
		case event != "":
			d.say("line %d arrived %.1fms after the %s, from %s, on the same connection and response: no new request",
				l.Seq, float64(time.Since(eventTime).Microseconds())/1000, event, now)
			event = ""
		case l.Seq == 1:
			d.say("line 1 from %s: %s", now, shorten(l.Bytes, 110))
		case l.Status == "aborted" && firstAbort:
			firstAbort = false
			d.say("line %d from %s: %s", l.Seq, now, shorten(l.Bytes, 110))
		}
		victim := d.children[now]
		switch {
		case l.Seq == killAt && l.Seq < n:
			d.say("%d of %d lines in: kill -9 %s (pid %d), the front-end serving this batch", l.Seq, n, now, victim.cmd.Process.Pid)
			victim.kill()
			event, eventTime = "kill", time.Now()
		case l.Seq == drainAt && l.Seq < n && !victim.exited():
			d.say("%d of %d lines in: SIGTERM to %s (pid %d), now serving the batch: it drains, moving its connections away", l.Seq, n, now, victim.cmd.Process.Pid)
			victim.cmd.Process.Signal(syscall.SIGTERM)
			event, eventTime = "drain", time.Now()
			drained, drainTime = victim, eventTime
		}
		return nil
	}})
	res.sum = sum
	if err != nil {
		return res, fmt.Errorf("demo: submit: %w", err)
	}
	d.say("batch done in %.2fs: %d committed, %d aborted (insufficient funds); %d request",
		time.Since(begin).Seconds(), sum.Committed, sum.Aborted, sum.Attempts)
	if sum.Attempts != 1 {
		return res, fmt.Errorf("demo: the client sent %d requests; over MTCP it should need one", sum.Attempts)
	}
	mu.Lock()
	moved := redirected
	mu.Unlock()
	if drained != nil && !moved {
		d.say("%s sent the rest of the batch before its drain had moved the connection (%.0fms after the SIGTERM): nothing left to move", drained.id, float64(time.Since(drainTime).Milliseconds()))
	}
	if drained != nil {
		select {
		case <-drained.done:
			d.say("%s drained and exited %.2fs after its SIGTERM", drained.id, time.Since(drainTime).Seconds())
		case <-time.After(10 * time.Second):
			return res, fmt.Errorf("demo: %s did not exit within 10s of its SIGTERM", drained.id)
		case <-ctx.Done():
			return res, ctx.Err()
		}
	}
	return res, nil
}
