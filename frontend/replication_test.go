package frontend

import (
	"context"
	"testing"
)

// TestReadinessSaysWhichDurabilityPromiseHolds: the test server streams to
// no standby, so a reported commit would not survive a failover: readyz
// says "async" and why, and with RequireSyncReplication it fails.
func TestReadinessSaysWhichDurabilityPromiseHolds(t *testing.T) {
	url := newDB(t)
	fe := startFrontend(t, url, Config{ID: "fe-r"}, false)
	if _, promise, err := fe.CheckReplication(context.Background()); err != nil || promise != "async" {
		t.Fatalf("CheckReplication: %s, %v; want async", promise, err)
	}
	v := fe.getJSON(t, "/readyz", nil, 200)
	repl, _ := v["replication"].(map[string]any)
	if repl["promise"] != "async" || repl["required"] != false || repl["detail"] == "" || repl["standbys"] != float64(0) {
		t.Fatalf("readyz %v", v)
	}

	strict := startFrontend(t, url, Config{ID: "fe-s", RequireSyncReplication: true}, false)
	strict.CheckReplication(context.Background())
	v = strict.getJSON(t, "/readyz", nil, 503)
	if repl, _ := v["replication"].(map[string]any); v["status"] != "replication not synchronous" || repl["promise"] != "async" || repl["required"] != true {
		t.Fatalf("readyz with RequireSyncReplication %v", v)
	}
}

// TestLostReportsStartEmpty: the admin route answers, with nothing lost.
func TestLostReportsStartEmpty(t *testing.T) {
	fe := startFrontend(t, newDB(t), Config{AdminToken: adminToken}, false)
	v := fe.getJSON(t, "/admin/lost-reports", map[string]string{"Authorization": "Bearer " + adminToken}, 200)
	if l, _ := v["lost_reports"].([]any); len(l) != 0 || v["total"] != float64(0) {
		t.Fatalf("lost-reports %v", v)
	}
}
