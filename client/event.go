package client

import (
	"fmt"
	"time"
)

// EventKind says what an Event reports.
type EventKind uint8

const (
	// EventAttempt: a request is about to be sent to URL.
	EventAttempt EventKind = iota
	// EventStream: front-end FrontEnd answered 200 and streams the batch;
	// Resumed is its Hafe-Resumed header.
	EventStream
	// EventReplayed: a resumed stream replayed Replayed lines the caller
	// already had, each byte-identical to before; they were skipped.
	EventReplayed
	// EventRetry: the attempt failed with Err; the next one goes to Next
	// after Wait.
	EventRetry
)

var eventKindNames = [...]string{"attempt", "stream", "replayed", "retry"}

func (k EventKind) String() string {
	if int(k) < len(eventKindNames) {
		return eventKindNames[k]
	}
	return fmt.Sprintf("EventKind(%d)", uint8(k))
}

// Event tells a Config.Observe function what Submit is doing. Fields not
// relevant to Kind are zero.
type Event struct {
	Kind     EventKind
	Attempt  int    // 1-based
	URL      string // front-end base URL of this attempt
	FrontEnd string // its Hafe-Front-End id (EventStream, EventReplayed)
	BatchID  string
	Resumed  bool
	// Delivered is how many transaction lines the caller has had so far.
	Delivered int
	Replayed  int
	Err       error
	Wait      time.Duration
	Next      string
}
