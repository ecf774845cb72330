package mtcp

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

// checkLeaks fails the test if goroutines running mtcp code are still
// alive a while after the test's cleanups ran. Register it first so it runs
// last.
func checkLeaks(t *testing.T) {
	t.Helper()
	before := ourGoroutines()
	t.Cleanup(func() {
		var left []string
		for i := 0; i < 200; i++ { // up to ~10s: generous for a slow machine
			left = left[:0]
			for id, g := range ourGoroutines() {
				if _, ok := before[id]; !ok {
					left = append(left, g)
				}
			}
			if len(left) == 0 {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Errorf("%d leaked goroutines:\n%s", len(left), strings.Join(left, "\n\n"))
	})
}

func ourGoroutines() map[string]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	gs := map[string]string{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		if !strings.Contains(g, "hafe.dev/hafe/mtcp.") || strings.Contains(g, "checkLeaks") ||
			strings.Contains(g, "testing.tRunner") && !strings.Contains(g, "created by hafe.dev") {
			continue
		}
		id, _, _ := strings.Cut(g, " [")
		gs[id] = g
	}
	return gs
}
