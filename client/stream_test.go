package client

import (
	"errors"
	"testing"
)

func TestTrackerSkipsIdenticalReplayAndDeliversTheRest(t *testing.T) {
	var tr tracker
	feed := func(line string) lineKind {
		t.Helper()
		k, _, err := tr.feed([]byte(line))
		if err != nil {
			t.Fatalf("feed %s: %v", line, err)
		}
		return k
	}
	tr.startAttempt("u1", "b1")
	if feed(`{"seq":1,"status":"committed"}`) != lineNew || feed(`{"seq":2,"status":"aborted","error":{"code":"23514","message":"x"}}`) != lineNew {
		t.Fatal("first lines not new")
	}
	tr.startAttempt("u2", "b1")
	if feed(`{"seq":1,"status":"committed"}`) != lineReplayed || feed(`{"seq":2,"status":"aborted","error":{"code":"23514","message":"x"}}`) != lineReplayed {
		t.Fatal("replayed lines not recognised")
	}
	if feed(`{"seq":3,"status":"committed"}`) != lineNew {
		t.Fatal("seq 3 not new")
	}
	if feed(`{"done":true,"batch_id":"b1","transactions":3,"committed":2,"aborted":1}`) != lineDone {
		t.Fatal("summary not done")
	}
}

func TestTrackerRefusesWhatOneStreamWouldNotHaveSent(t *testing.T) {
	for _, tc := range []struct {
		name  string
		lines []string // fed after seq 1 and 2 were received on an earlier attempt
		batch string
		want  error
	}{
		{"replay differs", []string{`{"seq":1,"status":"aborted"}`}, "b1", ErrContinuity},
		{"another batch", nil, "b2", ErrContinuity},
		{"summary too early", []string{`{"seq":1,"status":"committed"}`, `{"done":true,"batch_id":"b1","transactions":1,"committed":1,"aborted":0}`}, "b1", ErrContinuity},
		{"totals differ", []string{`{"seq":1,"status":"committed"}`, `{"seq":2,"status":"committed"}`, `{"done":true,"batch_id":"b1","transactions":2,"committed":1,"aborted":1}`}, "b1", ErrContinuity},
		{"gap", []string{`{"seq":4,"status":"committed"}`}, "b1", &ProtocolError{}},
		{"out of order", []string{`{"seq":2,"status":"committed"}`, `{"seq":1,"status":"committed"}`}, "b1", &ProtocolError{}},
		{"not json", []string{`{"seq":1,`}, "b1", &ProtocolError{}},
		{"error line", []string{`{"error":{"code":"interrupted","message":"db gone"}}`}, "b1", &StreamError{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var tr tracker
			tr.startAttempt("u1", "b1")
			tr.feed([]byte(`{"seq":1,"status":"committed"}`))
			tr.feed([]byte(`{"seq":2,"status":"committed"}`))
			err := tr.startAttempt("u2", tc.batch)
			for _, l := range tc.lines {
				if err != nil {
					break
				}
				_, _, err = tr.feed([]byte(l))
			}
			switch want := tc.want.(type) {
			case *ProtocolError:
				var pe *ProtocolError
				if !errors.As(err, &pe) {
					t.Errorf("err = %v, want a protocol error", err)
				}
			case *StreamError:
				var se *StreamError
				if !errors.As(err, &se) || se.Code != "interrupted" || !retryable(err) {
					t.Errorf("err = %v, want a retryable stream error", err)
				}
			default:
				if !errors.Is(err, want) {
					t.Errorf("err = %v, want %v", err, want)
				}
			}
		})
	}
}
