package mtcp

import (
	"errors"
	"fmt"
	"net"
	"os"
)

// Errors a connection's Read and Write return, wrapped in a *net.OpError.
var (
	// ErrMigrated: the connection moved to another server; this end is
	// finished and must not be used again.
	ErrMigrated = errors.New("mtcp: connection migrated to another server")
	// ErrPeerClosed: the other end closed the connection.
	ErrPeerClosed = errors.New("mtcp: connection closed by peer")
	// ErrLost: no path could be (re)established in time; the stream is gone.
	ErrLost = errors.New("mtcp: connection lost")
	// ErrWriteClosed: Write after CloseWrite.
	ErrWriteClosed = errors.New("mtcp: write after CloseWrite")
	// ErrStateTooLarge: ExportState was given more than Limits.MaxState bytes.
	ErrStateTooLarge = errors.New("mtcp: state too large")
	// ErrNotServer / ErrNotClient: a method of the other end's role.
	ErrNotServer = errors.New("mtcp: not a server connection")
	ErrNotClient = errors.New("mtcp: not a client connection")
	// ErrSnapshotSuperseded: SnapshotSaved of a record this server itself
	// replaced meanwhile (a reattach stored the new migration counter):
	// the save did not happen; prepare the snapshot again and retry.
	ErrSnapshotSuperseded = errors.New("mtcp: snapshot record superseded by this server; prepare it again")
	// ErrNotMigratable: the input log overflowed since the last snapshot.
	ErrNotMigratable = errors.New("mtcp: connection cannot migrate until its next snapshot")
)

// RefusalCode says why a server refused a MIGRATE (or a peer a FETCH).
type RefusalCode uint8

const (
	RefuseUnknownConn      RefusalCode = 1 // no server knows this connection
	RefuseBadMAC           RefusalCode = 2 // the MAC does not verify with the connection's secret
	RefuseReplayedCounter  RefusalCode = 3 // the counter is not above the last accepted one
	RefuseStateUnavailable RefusalCode = 4 // the state could not be fetched from origin or store
	RefuseDraining         RefusalCode = 5 // the server takes no new connections
	RefuseUnauthenticated  RefusalCode = 6 // peer channel: wrong cluster key
	RefuseBadRequest       RefusalCode = 7 // malformed or inconsistent request
)

func (c RefusalCode) String() string {
	switch c {
	case RefuseUnknownConn:
		return "unknown connection"
	case RefuseBadMAC:
		return "bad MAC"
	case RefuseReplayedCounter:
		return "replayed counter"
	case RefuseStateUnavailable:
		return "state unavailable"
	case RefuseDraining:
		return "draining"
	case RefuseUnauthenticated:
		return "unauthenticated"
	case RefuseBadRequest:
		return "bad request"
	}
	return fmt.Sprintf("RefusalCode(%d)", uint8(c))
}

// RefusalError is a refusal received from (or sent by) a server.
type RefusalError struct {
	Code   RefusalCode
	Reason string
	Addr   string // the refusing server, when known
}

func (e *RefusalError) Error() string {
	s := "mtcp: refused: " + e.Code.String()
	if e.Addr != "" {
		s += " by " + e.Addr
	}
	if e.Reason != "" && e.Reason != e.Code.String() {
		s += ": " + e.Reason
	}
	return s
}

// Is makes errors.Is(err, &RefusalError{Code: c}) match on the code.
func (e *RefusalError) Is(target error) bool {
	t, ok := target.(*RefusalError)
	return ok && t.Code == e.Code
}

func refusal(code RefusalCode, format string, args ...any) *RefusalError {
	return &RefusalError{Code: code, Reason: fmt.Sprintf(format, args...)}
}

func (c *Conn) opErr(op string, err error) error {
	return &net.OpError{Op: op, Net: "mtcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

func timeoutErr(c *Conn, op string) error { return c.opErr(op, os.ErrDeadlineExceeded) }
