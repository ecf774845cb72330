package client

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// ErrContinuity is what every *ContinuityError matches with errors.Is.
var ErrContinuity = errors.New("G3 continuity violated")

// ErrIncomplete is what every *IncompleteError matches with errors.Is.
var ErrIncomplete = errors.New("batch incomplete")

// ErrCertificate is what every *CertificateError matches with errors.Is.
var ErrCertificate = errors.New("the front-end's TLS certificate does not verify")

// CertificateError means a front-end's TLS certificate did not verify:
// signed by an authority Config.TLSConfig does not trust, issued for
// another name, or expired. Err says which (it unwraps to the crypto/x509
// error, e.g. x509.UnknownAuthorityError). Trying that front-end again
// would fail the same way: Submit goes on to the others, and ends with
// this error once every front-end failed so.
type CertificateError struct {
	URL string
	Err error
}

func (e *CertificateError) Error() string {
	return fmt.Sprintf("%s: %v: %v", e.URL, ErrCertificate, e.Err)
}

func (e *CertificateError) Unwrap() error { return e.Err }

func (e *CertificateError) Is(target error) bool { return target == ErrCertificate }

// badCertificate reports whether err is a failed verification of the
// server's certificate.
func badCertificate(err error) bool {
	var verr *tls.CertificateVerificationError
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	var invalid x509.CertificateInvalidError
	return errors.As(err, &verr) || errors.As(err, &unknown) || errors.As(err, &host) || errors.As(err, &invalid)
}

// APIError is a front-end's refusal of a request: an HTTP status other than
// 200 with a body {"error":{"code":…,"message":…}}. Statuses 409 and 5xx are
// retried; any other 4xx ends Submit.
type APIError struct {
	URL        string
	Status     int
	Code       string // e.g. "idempotency_key_reused", "batch_in_progress"
	Message    string
	RetryAfter time.Duration // from the Retry-After header; 0 when absent
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s: %d %s: %s", e.URL, e.Status, e.Code, e.Message)
}

// Retryable reports whether another attempt, elsewhere or later, may succeed.
func (e *APIError) Retryable() bool { return e.Status == 409 || e.Status >= 500 }

// StreamError is a stream that ended before its summary line: the
// connection failed, the front-end reported an error line (such as
// "interrupted"), or nothing arrived for Config.StallTimeout. The batch can
// be resumed with the same key.
type StreamError struct {
	URL   string
	Lines int    // lines this attempt received before it broke
	Code  string // the error line's code, "" when the connection broke
	// NoResponse is true when the request got no response at all (e.g.
	// connection refused): the front-end may be down.
	NoResponse bool
	Err        error
}

func (e *StreamError) Error() string {
	if e.NoResponse {
		return fmt.Sprintf("%s: no response: %v", e.URL, e.Err)
	}
	if e.Code != "" {
		return fmt.Sprintf("%s: stream broke after %d lines: %s: %v", e.URL, e.Lines, e.Code, e.Err)
	}
	return fmt.Sprintf("%s: stream broke after %d lines: %v", e.URL, e.Lines, e.Err)
}

func (e *StreamError) Unwrap() error { return e.Err }

// ContinuityError means the responses across attempts are not what one
// uninterrupted front-end would have sent: a replayed line differs from the
// one received before, the key now names another batch, or the summary's
// totals disagree with the lines. Submit stops at once; this is a bug or a
// misconfiguration on the server side, not a transient failure.
type ContinuityError struct {
	URL    string
	Seq    int // the line concerned, 0 when not one line
	Reason string
}

func (e *ContinuityError) Error() string {
	if e.Seq > 0 {
		return fmt.Sprintf("%v: %s: seq %d: %s", ErrContinuity, e.URL, e.Seq, e.Reason)
	}
	return fmt.Sprintf("%v: %s: %s", ErrContinuity, e.URL, e.Reason)
}

func (e *ContinuityError) Is(target error) bool { return target == ErrContinuity }

// ProtocolError is a response that is not the batch API's: a line that is
// not JSON, a gap in seq, an unexpected content type. It ends Submit.
type ProtocolError struct {
	URL    string
	Reason string
}

func (e *ProtocolError) Error() string { return fmt.Sprintf("%s: protocol error: %s", e.URL, e.Reason) }

// IncompleteError means Submit gave up before the summary line: the attempt
// limit was reached. Err is the last attempt's failure.
type IncompleteError struct {
	Attempts int
	Err      error
}

func (e *IncompleteError) Error() string {
	return fmt.Sprintf("%v after %d attempts: %v", ErrIncomplete, e.Attempts, e.Err)
}

func (e *IncompleteError) Unwrap() error { return e.Err }

func (e *IncompleteError) Is(target error) bool { return target == ErrIncomplete }

// retryable says whether err, from one attempt, should be retried.
func retryable(err error) bool {
	var api *APIError
	var stream *StreamError
	switch {
	case errors.As(err, &api):
		return api.Retryable()
	case errors.As(err, &stream):
		return true
	}
	return false
}
