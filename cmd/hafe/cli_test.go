package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestLogFormats(t *testing.T) {
	for _, c := range []struct {
		format string
		check  func(string) bool
	}{
		{"text", func(s string) bool { return strings.Contains(s, "msg=hello") && strings.Contains(s, "request_id=r1") }},
		{"json", func(s string) bool {
			var m map[string]any
			return json.Unmarshal([]byte(s), &m) == nil && m["msg"] == "hello" && m["request_id"] == "r1"
		}},
	} {
		var buf bytes.Buffer
		log, err := newLogger(&buf, "info", c.format)
		if err != nil {
			t.Fatal(err)
		}
		log.Info("hello", "request_id", "r1")
		log.Debug("not at info")
		if !c.check(buf.String()) || strings.Contains(buf.String(), "not at info") {
			t.Errorf("--log-format %s wrote %q", c.format, buf.String())
		}
	}
	if _, err := newLogger(&bytes.Buffer{}, "info", "xml"); err == nil || !strings.Contains(err.Error(), "--log-format") {
		t.Errorf("--log-format xml: %v", err)
	}
	if _, err := newLogger(&bytes.Buffer{}, "loud", "text"); err == nil || !strings.Contains(err.Error(), "--log-level") {
		t.Errorf("--log-level loud: %v", err)
	}
}
