// Package api holds the types of hafe's HTTP API: the batch request, the
// lines of a batch response, refusals and the admin answers. The front-end
// renders them; the client, the tools and the tests read them. docs/api.md
// describes them for users and frontend/openapi.json for machines.
//
// Field order and JSON tags are part of the API: a batch's request hash is
// taken over the canonical JSON of Batch (json.Marshal), and report lines
// are stored as rendered and replayed byte for byte, so neither may change.
package api

import (
	"encoding/json"
	"fmt"
)

// Headers of a batch response.
const (
	// HeaderBatchID names the batch the response reports.
	HeaderBatchID = "Hafe-Batch-Id"
	// HeaderFrontEnd names the front-end that started the response (over
	// MTCP, also after the connection moved).
	HeaderFrontEnd = "Hafe-Front-End"
	// HeaderResumed is "true" when the batch existed before the request.
	HeaderResumed = "Hafe-Resumed"
	// HeaderIdempotencyKey names a batch across retries.
	HeaderIdempotencyKey = "Idempotency-Key"
)

// Batch is the body of POST /v1/batches.
type Batch struct {
	Transactions []Transaction `json:"transactions"`
	Isolation    string        `json:"isolation,omitempty"`
}

// Transaction is a template call or raw SQL, not both.
type Transaction struct {
	Template string         `json:"template,omitempty"`
	Args     map[string]any `json:"args,omitempty"`
	SQL      []Statement    `json:"sql,omitempty"`
}

// Statement is one raw SQL statement with its positional arguments.
type Statement struct {
	Query string `json:"query"`
	Args  []any  `json:"args,omitempty"`
}

// Outcome statuses of a transaction.
const (
	StatusCommitted = "committed"
	StatusAborted   = "aborted"
)

// Result is what one statement returned.
type Result struct {
	Command      string `json:"command"`
	RowsAffected int64  `json:"rows_affected"`
	// Columns and Rows are present only for statements that return rows.
	Columns []string `json:"columns,omitempty"`
	Rows    *[][]any `json:"rows,omitempty"`
}

// SlotError says why a transaction aborted. Code is the SQLSTATE for
// database errors, or one of hafe's own words (e.g. "result_too_large").
type SlotError struct {
	Code      string `json:"code"`
	Message   string `json:"message"`
	Statement int    `json:"statement,omitempty"` // 1-based; 0 when not one statement's fault
	Detail    string `json:"detail,omitempty"`
}

func (e *SlotError) Error() string { return fmt.Sprintf("%s: %s", e.Code, e.Message) }

// Report is one transaction's line in a batch response.
type Report struct {
	Seq     int        `json:"seq"`
	Status  string     `json:"status"`
	Results []Result   `json:"results,omitempty"`
	Error   *SlotError `json:"error,omitempty"`
}

// Summary is a batch response's last line.
type Summary struct {
	Done         bool   `json:"done"`
	BatchID      string `json:"batch_id"`
	Transactions int    `json:"transactions"`
	Committed    int    `json:"committed"`
	Aborted      int    `json:"aborted"`
}

// Line renders the summary line, without its newline.
func (s Summary) Line() []byte {
	b, _ := json.Marshal(s)
	return b
}

// Refusal is the body of every 4xx and 5xx answer, and of the error line
// that ends an interrupted batch response.
type Refusal struct {
	Error RefusalError `json:"error"`
}

// RefusalError says why: Code is stable (docs/api.md lists them), Message
// is for people.
type RefusalError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// BatchInfo is a batch in admin answers (GET /admin/batches).
type BatchInfo struct {
	ID             string `json:"batch_id"`
	State          string `json:"state"` // running, done or abandoned
	IdempotencyKey string `json:"idempotency_key,omitempty"`
	Client         string `json:"client,omitempty"`
	Owner          string `json:"owner"`
	OwnerAlive     bool   `json:"owner_alive"`
	Epoch          int64  `json:"epoch"`
	Transactions   int    `json:"transactions"`
	SlotsDone      int    `json:"slots_done"`
	Committed      int    `json:"committed"`
	Aborted        int    `json:"aborted"`
	CreatedAt      string `json:"created_at"`
	UpdatedAt      string `json:"updated_at"`
}

// Takeover is one claim of a batch's lease by another owner.
type Takeover struct {
	BatchID        string `json:"batch_id,omitempty"` // in lists of any batch's
	Epoch          int64  `json:"epoch"`
	PreviousOwner  string `json:"previous_owner"` // "" when the batch had been released
	Owner          string `json:"owner"`
	FencedSessions int    `json:"fenced_sessions"`
	At             string `json:"at"`
}

// BatchDetail is GET /admin/batches/{id}'s answer.
type BatchDetail struct {
	BatchInfo
	Takeovers []Takeover        `json:"takeovers"`
	Outcomes  []json.RawMessage `json:"outcomes"`
}

// Member is a front-end in admin answers. HeartbeatAgeSeconds is by the
// database's clock; the counters are as the member published them with
// its last heartbeat.
type Member struct {
	ID                  string  `json:"id"`
	HTTPAddr            string  `json:"http_addr"`
	Load                float64 `json:"load"`
	Draining            bool    `json:"draining"`
	Alive               bool    `json:"alive"`
	HeartbeatAt         string  `json:"heartbeat_at"`
	HeartbeatAgeSeconds float64 `json:"heartbeat_age_seconds"`
	MTCPAddr            string  `json:"mtcp_addr,omitempty"`
	MTCPConnections     int     `json:"mtcp_connections"`
	// Committed and Aborted are the transactions the member executed
	// since it started.
	Committed int64 `json:"committed"`
	Aborted   int64 `json:"aborted"`
}

// Migration is an MTCP migration in admin answers, with the phases the
// front-end that took the connection measured.
type Migration struct {
	ConnID          string `json:"conn_id"`
	From            string `json:"from"`
	To              string `json:"to"`
	TakenBy         string `json:"taken_by"`
	Mode            string `json:"mode"`    // lazy or eager
	Trigger         string `json:"trigger"` // redirect, origin_down or client
	Error           string `json:"error,omitempty"`
	PrepareMicros   int64  `json:"prepare_us"`
	WaitMicros      int64  `json:"wait_us"`
	ReinstateMicros int64  `json:"reinstate_us"`
	StateBytes      int    `json:"state_bytes"`
	At              string `json:"at"`
}

// DrainStatus is POST /admin/drain's answer.
type DrainStatus struct {
	// Status is "drained" (no batch runs there, no MTCP connection is
	// left) or "draining".
	Status          string `json:"status"`
	BatchesInFlight int    `json:"batches_in_flight"`
	MTCPConnections int    `json:"mtcp_connections"`
}
