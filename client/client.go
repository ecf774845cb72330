package client

import (
	"bufio"
	"bytes"
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net"
	"net/http"
	neturl "net/url"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"hafe.dev/hafe/api"
	"hafe.dev/hafe/mtcp"
)

// Config configures a Client. Zero fields take the documented defaults.
type Config struct {
	// FrontEnds are the front-ends' base URLs, e.g. "http://10.0.0.7:8080"
	// ("host:port" means http). Submit starts with the first and moves to
	// the next, round-robin, on every retry.
	FrontEnds []string
	// Token, when set, is sent as "Authorization: Bearer <Token>".
	Token string
	// HTTPClient sends the requests. Default: one with a 5 s dial timeout
	// and no overall timeout, since a batch may stream for a long time.
	HTTPClient *http.Client
	// MTCP, when set (and HTTPClient is not), sends the requests over
	// Migratory TCP: FrontEnds then name the front-ends' MTCP addresses
	// (hafe serve --mtcp-listen), and a connection whose front-end dies,
	// drains or slows down moves to another one in the middle of a batch,
	// which goes on without a second request. Should the connection be
	// lost all the same, Submit retries with the Idempotency-Key as over
	// plain HTTP. MTCP.Servers defaults to the FrontEnds' addresses.
	MTCP *mtcp.Dialer
	// TLSConfig is the TLS configuration for https:// front-ends and, with
	// MTCP (when MTCP.TLSConfig is nil), for the MTCP paths: its RootCAs
	// are the CAs the front-ends' certificates are checked against.
	// Default: the system's CAs for https:// front-ends; plain TCP for
	// MTCP unless a front-end URL is https://.
	TLSConfig *tls.Config
	// MaxAttempts bounds the requests of one Submit (default 10).
	MaxAttempts int
	// MinBackoff is the pause before a retry (default 100 ms). It doubles
	// after each attempt that brought no new line, up to MaxBackoff
	// (default 5 s). A server's Retry-After is honoured up to MaxBackoff.
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// StallTimeout abandons an attempt that receives nothing for this long
	// and retries elsewhere (default 60 s).
	StallTimeout time.Duration
	// MaxLineBytes bounds one response line (default 64 MiB).
	MaxLineBytes int
	// Observe, when set, is told about attempts, streams, replays and
	// retries. It runs on Submit's goroutine and should return quickly.
	Observe func(Event)
}

func (c Config) withDefaults() Config {
	if c.HTTPClient == nil && c.MTCP != nil {
		d := *c.MTCP
		if d.TLSConfig == nil {
			d.TLSConfig = c.TLSConfig
		}
		if d.TLSConfig == nil && slices.ContainsFunc(c.FrontEnds, func(f string) bool { return strings.HasPrefix(strings.TrimSpace(f), "https://") }) {
			d.TLSConfig = &tls.Config{}
		}
		if d.Limits.MaxSendBuffer == 0 {
			// A front-end in eager mode acknowledges a request only once
			// it has answered it (its snapshots are taken between
			// requests): the whole body must fit, and hafe serve takes
			// bodies of up to 8 MiB by default.
			d.Limits.MaxSendBuffer = MTCPSendBuffer
		}
		if len(d.Servers) == 0 {
			for _, f := range c.FrontEnds {
				if u, err := normalizeURL(f); err == nil {
					pu, _ := neturl.Parse(u)
					d.Servers = append(d.Servers, pu.Host)
				}
			}
		}
		c.HTTPClient = &http.Client{Transport: &http.Transport{
			DialContext: d.DialContext,
			// An MTCP path does its own TLS (d.TLSConfig), below the
			// MTCP frames: https:// front-ends need no second layer.
			DialTLSContext:      d.DialContext,
			MaxIdleConnsPerHost: 4,
			IdleConnTimeout:     90 * time.Second,
		}}
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConnsPerHost:   4,
			IdleConnTimeout:       90 * time.Second,
			TLSClientConfig:       c.TLSConfig,
			TLSHandshakeTimeout:   10 * time.Second,
			ExpectContinueTimeout: time.Second,
		}}
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 10
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = 100 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 5 * time.Second
	}
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = c.MinBackoff
	}
	if c.StallTimeout <= 0 {
		c.StallTimeout = time.Minute
	}
	if c.MaxLineBytes <= 0 {
		c.MaxLineBytes = 64 << 20
	}
	return c
}

// Client submits batches to a list of front-ends. It is safe for
// concurrent use.
type Client struct {
	cfg  Config
	urls []string // normalised base URLs, no trailing slash
}

// New checks cfg and returns a client.
func New(cfg Config) (*Client, error) {
	if len(cfg.FrontEnds) == 0 {
		return nil, errors.New("client: no front-end URLs")
	}
	c := &Client{cfg: cfg.withDefaults()}
	for _, raw := range cfg.FrontEnds {
		u, err := normalizeURL(raw)
		if err != nil {
			return nil, err
		}
		c.urls = append(c.urls, u)
	}
	return c, nil
}

func normalizeURL(raw string) (string, error) {
	s := strings.TrimSpace(raw)
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := neturl.Parse(s)
	if err != nil {
		return "", fmt.Errorf("client: front-end URL %q: %w", raw, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("client: front-end URL %q: want http://host:port or https://host:port", raw)
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// MTCPSendBuffer is the MTCP send buffer the client gives its connections
// when Config.MTCP sets none: the largest request body it can send to a
// front-end in eager mode.
const MTCPSendBuffer = 16 << 20

// CloseIdleConnections closes the connections kept open for later
// requests. Call it when done with the client.
func (c *Client) CloseIdleConnections() { c.cfg.HTTPClient.CloseIdleConnections() }

// Request is one batch to submit.
type Request struct {
	// Body is the batch, {"transactions":[…]}, sent byte for byte on every
	// attempt.
	Body []byte
	// IdempotencyKey names the batch across attempts; empty means a random
	// key (returned in Summary.IdempotencyKey, so a later Submit can resume).
	IdempotencyKey string
	// OnLine receives each transaction's line once, in seq order, then the
	// summary line. An error it returns ends Submit with that error.
	OnLine func(Line) error
}

// Line is one line of the batch's response as the caller sees it.
type Line struct {
	Seq    int    // 1-based; 0 on the summary line
	Status string // "committed" or "aborted"; "" on the summary line
	Done   bool   // the summary line
	// Bytes is the line exactly as the front-end sent it, without the
	// newline. It is valid only during the OnLine call.
	Bytes    []byte
	FrontEnd string // the front-end that sent it (Hafe-Front-End)
}

// Summary is what Submit returns: the batch's totals and how it got them.
// After a failed Submit it describes what was received until then.
type Summary struct {
	BatchID        string
	IdempotencyKey string
	Transactions   int // lines received (all of them once Done)
	Committed      int
	Aborted        int
	Done           bool // the summary line arrived
	Attempts       int  // requests sent
	// FrontEnds are the front-ends that streamed this batch, in order (an
	// id appears again only after another one in between).
	FrontEnds []string
	Resumed   bool // some stream was a resumption (Hafe-Resumed: true)
}

// Retries is the number of attempts after the first.
func (s Summary) Retries() int { return max(s.Attempts-1, 0) }

// NewIdempotencyKey returns a random key: 128 bits, hex, prefixed "hafe-".
func NewIdempotencyKey() string {
	var b [16]byte
	crand.Read(b[:])
	return "hafe-" + hex.EncodeToString(b[:])
}

// Submit sends the batch and streams its lines to req.OnLine until the
// summary line, retrying on the next front-end with the same key and body
// when a stream breaks or a front-end answers 409 or 5xx. It returns a
// *APIError for a final refusal (4xx but 409), a *ContinuityError when a
// resumed stream disagrees with what was received before, an
// *IncompleteError when the attempts run out, or ctx's error.
func (c *Client) Submit(ctx context.Context, req Request) (Summary, error) {
	key := req.IdempotencyKey
	if key == "" {
		key = NewIdempotencyKey()
	}
	s := &submission{c: c, req: req, key: key, sum: Summary{IdempotencyKey: key}}
	err := s.run(ctx)
	s.sum.BatchID = s.t.batchID
	s.sum.Transactions = s.t.delivered()
	s.sum.Committed, s.sum.Aborted = s.t.committed, s.t.aborted
	return s.sum, err
}

// submission is one Submit call's state.
type submission struct {
	c   *Client
	req Request
	key string
	t   tracker
	sum Summary
}

func (s *submission) observe(e Event) {
	if s.c.cfg.Observe != nil {
		e.Delivered = s.t.delivered()
		s.c.cfg.Observe(e)
	}
}

func (s *submission) run(ctx context.Context) error {
	cfg := s.c.cfg
	idle := 0 // attempts in a row that brought no new line
	// Front-ends that refused this client's credentials (401/403) or
	// whose certificate did not verify: the batch ends with that refusal
	// only once every front-end gave it, as one misconfigured front-end
	// must not end a batch others would run.
	authRefused := map[string]bool{}
	// Front-ends whose address refused the connection, and until when
	// they are skipped while others remain.
	down := map[string]time.Time{}
	next := 0 // index of the next front-end to try
	for attempt := 1; ; attempt++ {
		url := s.pick(&next, authRefused, down)
		s.sum.Attempts = attempt
		before := s.t.delivered()
		err := s.attempt(ctx, attempt, url)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("submit batch: %w", context.Cause(ctx))
		}
		var api *APIError
		var cert *CertificateError
		authErr := errors.As(err, &api) && (api.Status == http.StatusUnauthorized || api.Status == http.StatusForbidden) || errors.As(err, &cert)
		if authErr {
			authRefused[url] = true
			if len(authRefused) == len(s.c.urls) {
				return err
			}
		} else if !retryable(err) {
			return err
		}
		if connRefused(err) {
			down[url] = time.Now().Add(cfg.MaxBackoff)
		}
		if attempt >= cfg.MaxAttempts {
			return &IncompleteError{Attempts: attempt, Err: err}
		}
		if s.t.delivered() > before {
			idle = 0
		} else {
			idle++
		}
		wait := s.backoff(idle, err)
		if authErr {
			wait = 0 // not a matter of time: go to the next front-end at once
		}
		peek := next
		nextURL := s.pick(&peek, authRefused, down)
		s.observe(Event{Kind: EventRetry, Attempt: attempt, URL: url, BatchID: s.t.batchID, Err: err, Wait: wait, Next: nextURL})
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("submit batch: %w", context.Cause(ctx))
		case <-timer.C:
		}
	}
}

// pick returns the front-end to try next, from *next on in the list's
// order: one that neither refused the client's credentials nor refused the
// connection lately, if there is one; else the next in turn.
func (s *submission) pick(next *int, authRefused map[string]bool, down map[string]time.Time) string {
	urls := s.c.urls
	now := time.Now()
	for i := range urls {
		u := urls[(*next+i)%len(urls)]
		if !authRefused[u] && !now.Before(down[u]) {
			*next = (*next + i + 1) % len(urls)
			return u
		}
	}
	for i := range urls { // every one is down: try them in turn anyway
		u := urls[(*next+i)%len(urls)]
		if !authRefused[u] {
			*next = (*next + i + 1) % len(urls)
			return u
		}
	}
	u := urls[*next%len(urls)]
	*next = (*next + 1) % len(urls)
	return u
}

// connRefused reports whether err says nothing listens at the address.
func connRefused(err error) bool {
	var stream *StreamError
	return errors.As(err, &stream) && stream.NoResponse && errors.Is(err, syscall.ECONNREFUSED)
}

// backoff is the pause before the next attempt: MinBackoff doubled for each
// fruitless attempt in a row, with jitter, at least the server's
// Retry-After, never more than MaxBackoff.
func (s *submission) backoff(idle int, err error) time.Duration {
	cfg := s.c.cfg
	wait := cfg.MinBackoff << min(idle, 16)
	wait += rand.N(wait/4 + 1)
	var api *APIError
	if errors.As(err, &api) && api.RetryAfter > wait {
		wait = api.RetryAfter
	}
	return min(wait, cfg.MaxBackoff)
}

// attempt sends one request to url and reads its stream.
func (s *submission) attempt(ctx context.Context, n int, url string) error {
	cfg := s.c.cfg
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	errStalled := fmt.Errorf("nothing received for %v", cfg.StallTimeout)
	stall := time.AfterFunc(cfg.StallTimeout, func() { cancel(errStalled) })
	defer stall.Stop()

	hreq, err := http.NewRequestWithContext(actx, http.MethodPost, url+"/v1/batches", bytes.NewReader(s.req.Body))
	if err != nil {
		return &ProtocolError{URL: url, Reason: err.Error()}
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Accept", "application/x-ndjson")
	hreq.Header.Set(api.HeaderIdempotencyKey, s.key)
	hreq.Header.Set("User-Agent", "hafe-client")
	if cfg.Token != "" {
		hreq.Header.Set("Authorization", "Bearer "+cfg.Token)
	}
	s.observe(Event{Kind: EventAttempt, Attempt: n, URL: url, BatchID: s.t.batchID})
	resp, err := cfg.HTTPClient.Do(hreq)
	if err != nil {
		if c := context.Cause(actx); c == errStalled {
			err = c
		}
		var ue *neturl.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL is said once, by StreamError
		}
		if badCertificate(err) {
			return &CertificateError{URL: url, Err: err}
		}
		return &StreamError{URL: url, NoResponse: true, Err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return refusal(url, resp)
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "application/x-ndjson" {
		return &ProtocolError{URL: url, Reason: fmt.Sprintf("200 with content type %q, not application/x-ndjson", resp.Header.Get("Content-Type"))}
	}
	fe := resp.Header.Get(api.HeaderFrontEnd)
	if fe == "" {
		fe = url
	}
	resumed := resp.Header.Get(api.HeaderResumed) == "true"
	if err := s.t.startAttempt(url, resp.Header.Get(api.HeaderBatchID)); err != nil {
		return err
	}
	if resumed {
		s.sum.Resumed = true
	}
	if l := len(s.sum.FrontEnds); l == 0 || s.sum.FrontEnds[l-1] != fe {
		s.sum.FrontEnds = append(s.sum.FrontEnds, fe)
	}
	s.observe(Event{Kind: EventStream, Attempt: n, URL: url, FrontEnd: fe, BatchID: s.t.batchID, Resumed: resumed})

	br := bufio.NewReaderSize(&progressReader{r: resp.Body, stall: stall, d: cfg.StallTimeout}, 64<<10)
	replayed, announced := 0, false
	announce := func() {
		if replayed > 0 && !announced {
			announced = true
			s.observe(Event{Kind: EventReplayed, Attempt: n, URL: url, FrontEnd: fe, BatchID: s.t.batchID, Resumed: resumed, Replayed: replayed})
		}
	}
	for {
		raw, err := readLine(br, cfg.MaxLineBytes)
		if err != nil {
			if c := context.Cause(actx); c == errStalled {
				err = c
			} else if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF // the summary line had not come
			}
			if errors.Is(err, errLineTooLong) {
				return &ProtocolError{URL: url, Reason: err.Error()}
			}
			return &StreamError{URL: url, Lines: s.t.lastSeq, Err: err}
		}
		line := trimLine(raw)
		if len(line) == 0 {
			continue
		}
		kind, w, err := s.t.feed(line)
		if err != nil {
			return err
		}
		switch kind {
		case lineReplayed:
			replayed++
			continue
		case lineNew:
			announce()
			if err := s.deliver(Line{Seq: *w.Seq, Status: w.Status, Bytes: line, FrontEnd: fe}); err != nil {
				return err
			}
		case lineDone:
			announce()
			s.sum.Done = true
			return s.deliver(Line{Done: true, Bytes: line, FrontEnd: fe})
		}
	}
}

func (s *submission) deliver(l Line) error {
	if s.req.OnLine == nil {
		return nil
	}
	if err := s.req.OnLine(l); err != nil {
		return fmt.Errorf("client: OnLine: %w", err)
	}
	return nil
}

// refusal reads a non-200 response into an *APIError.
func refusal(url string, resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &APIError{URL: url, Status: resp.StatusCode, RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"))}
	var w struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &w) == nil && w.Error.Code != "" {
		e.Code, e.Message = w.Error.Code, w.Error.Message
	} else {
		e.Code = "http_" + strconv.Itoa(resp.StatusCode)
		e.Message = strings.TrimSpace(string(body))
		if e.Message == "" {
			e.Message = http.StatusText(resp.StatusCode)
		}
		if len(e.Message) > 200 {
			e.Message = e.Message[:200] + "…"
		}
	}
	return e
}

// parseRetryAfter reads delay-seconds or an HTTP date; 0 when absent or bad.
func parseRetryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

var errLineTooLong = errors.New("response line longer than the limit")

// readLine returns the next line including its newline; a last line
// without a newline is an error (the stream was cut in the middle of it).
func readLine(br *bufio.Reader, limit int) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if err == nil {
			if buf == nil {
				return chunk, nil
			}
			return append(buf, chunk...), nil
		}
		if err != bufio.ErrBufferFull {
			return nil, err
		}
		buf = append(buf, chunk...)
		if len(buf) > limit {
			return nil, fmt.Errorf("%w (%d bytes)", errLineTooLong, limit)
		}
	}
}

// progressReader pushes the stall deadline back whenever bytes arrive.
type progressReader struct {
	r     io.Reader
	stall *time.Timer
	d     time.Duration
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.stall.Reset(p.d)
	}
	return n, err
}
