package client

import (
	"context"
	"encoding/json"
	"fmt"
	"hafe.dev/hafe/api"
	"io"
	"net/http"
	neturl "net/url"
	"strconv"
	"time"
)

// Admin reads a front-end's operator routes (/admin), which answer for the
// whole cluster from any front-end.
type Admin struct {
	url   string
	token string
	http  *http.Client
}

// NewAdmin returns an Admin for the front-end at url (http://host:port,
// https://host:port or host:port) with the --admin-token token. hc, when
// not nil, sends the requests (its Transport's TLSClientConfig says which
// CAs an https:// front-end's certificate is checked against).
func NewAdmin(url, token string, hc *http.Client) (*Admin, error) {
	u, err := normalizeURL(url)
	if err != nil {
		return nil, err
	}
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	return &Admin{url: u, token: token, http: hc}, nil
}

// The admin answers' types are the API's.
type (
	// Batch is a batch as GET /admin/batches describes it.
	Batch = api.BatchInfo
	// Takeover is one claim of a batch's lease by another owner.
	Takeover = api.Takeover
	// BatchDetail is GET /admin/batches/{id}'s answer.
	BatchDetail = api.BatchDetail
	// DrainStatus is a front-end's answer to a drain.
	DrainStatus = api.DrainStatus
)

// BatchFilter selects batches; zero fields select all.
type BatchFilter struct {
	State     string
	Owner     string
	OlderThan time.Duration
	Key       string
	Limit     int
}

func (f BatchFilter) query() string {
	q := neturl.Values{}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	set("state", f.State)
	set("owner", f.Owner)
	set("key", f.Key)
	if f.OlderThan > 0 {
		q.Set("older_than", f.OlderThan.String())
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	if len(q) == 0 {
		return ""
	}
	return "?" + q.Encode()
}

// Batches lists the batches f selects, most recently changed first.
func (a *Admin) Batches(ctx context.Context, f BatchFilter) ([]Batch, error) {
	var v struct {
		Batches []Batch `json:"batches"`
	}
	err := a.get(ctx, "/admin/batches"+f.query(), &v)
	return v.Batches, err
}

// Batch describes one batch, its takeovers and its recorded outcomes.
func (a *Admin) Batch(ctx context.Context, id string) (BatchDetail, error) {
	var v BatchDetail
	err := a.get(ctx, "/admin/batches/"+neturl.PathEscape(id), &v)
	return v, err
}

// Drain tells the front-end to take no new batches and to move its MTCP
// connections to the other front-ends, and waits until it is drained or
// wait has passed (at most 10 minutes).
func (a *Admin) Drain(ctx context.Context, wait time.Duration) (DrainStatus, error) {
	var v DrainStatus
	path := "/admin/drain?wait=" + neturl.QueryEscape(wait.String())
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.url+path, nil)
	if err != nil {
		return v, err
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	hc := *a.http
	if hc.Timeout != 0 {
		hc.Timeout = max(hc.Timeout, wait+30*time.Second)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return v, a.transportError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusAccepted {
		return v, refusal(a.url, resp)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&v); err != nil {
		return v, fmt.Errorf("%s%s: %w", a.url, path, err)
	}
	return v, nil
}

func (a *Admin) get(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.url+path, nil)
	if err != nil {
		return err
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return a.transportError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return refusal(a.url, resp)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(v); err != nil {
		return fmt.Errorf("%s%s: %w", a.url, path, err)
	}
	return nil
}

// transportError makes a certificate that did not verify a
// *CertificateError.
func (a *Admin) transportError(err error) error {
	if badCertificate(err) {
		return &CertificateError{URL: a.url, Err: err}
	}
	return err
}
