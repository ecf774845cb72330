package test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hafe.dev/hafe/test/harness"
)

// TestHafeImageRuns runs `hafe version` in the hafe image: the static binary
// starts in an image FROM scratch.
func TestHafeImageRuns(t *testing.T) {
	harness.RequireDocker(t)
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if m, _ := filepath.Glob(filepath.Join(root, "cmd", "hafe", "*.go")); len(m) == 0 {
		t.Skip("cmd/hafe not written yet")
	}
	code, out := harness.RunHafe(t, nil, time.Minute, "version")
	if code != 0 || strings.TrimSpace(out) == "" {
		t.Fatalf("hafe version: exit %d, output %q", code, out)
	}
	t.Logf("hafe version: %s", strings.TrimSpace(out))
}
