package frontend

import (
	"testing"
)

// TestRotatingATokenSecretKeepsItsKeys: Idempotency-Keys are scoped by the
// token's name, not its secret, so a client whose secret was rotated
// resumes its batches instead of running them again; another client's
// same key is another batch (issue 8.14).
func TestRotatingATokenSecretKeepsItsKeys(t *testing.T) {
	url := newDB(t)
	db := newChecker(t, url)
	before := startFrontend(t, url, Config{ID: "fe-old", AllowRawSQL: true, ClientTokens: []Token{{Name: "shop", Secret: "old-secret"}, {Name: "billing", Secret: "billing-secret"}}}, false)
	// During the rotation both secrets are valid, then only the new one.
	during := startFrontend(t, url, Config{ID: "fe-during", AllowRawSQL: true, ClientTokens: []Token{{Name: "shop", Secret: "old-secret"}, {Name: "shop", Secret: "new-secret"}}}, false)
	after := startFrontend(t, url, Config{ID: "fe-after", AllowRawSQL: true, ClientTokens: []Token{{Name: "shop", Secret: "new-secret"}, {Name: "billing", Secret: "billing-secret"}}}, false)
	body := batchBody(rawTxn("INSERT INTO effects (note) VALUES ('once')"))
	as := func(secret string) map[string]string {
		return map[string]string{"Authorization": "Bearer " + secret, "Idempotency-Key": "order-1"}
	}
	resp, first := before.post(t, body, as("old-secret"))
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, first)
	}
	for _, step := range []struct {
		fe     *frontendUnderTest
		secret string
	}{{during, "new-secret"}, {during, "old-secret"}, {after, "new-secret"}} {
		resp, again := step.fe.post(t, body, as(step.secret))
		if resp.StatusCode != 200 || resp.Header.Get("Hafe-Resumed") != "true" || string(again) != string(first) {
			t.Fatalf("%s with %s: %d resumed=%q\n%s\nwant\n%s", step.fe.cfg.ID, step.secret, resp.StatusCode, resp.Header.Get("Hafe-Resumed"), again, first)
		}
	}
	if n := db.count("SELECT count(*) FROM effects"); n != 1 {
		t.Fatalf("the batch ran %d times", n)
	}
	// Another client's same key is its own batch.
	resp, out := after.post(t, body, as("billing-secret"))
	if resp.StatusCode != 200 || resp.Header.Get("Hafe-Resumed") != "" {
		t.Fatalf("billing: %d resumed=%q %s", resp.StatusCode, resp.Header.Get("Hafe-Resumed"), out)
	}
	if n := db.count("SELECT count(*) FROM effects"); n != 2 {
		t.Fatalf("%d effects, want 2", n)
	}
	// The old secret is no longer valid after the rotation.
	resp, out = after.post(t, body, as("old-secret"))
	checkRefusal(t, resp, out, 401, "unauthorized")
}
