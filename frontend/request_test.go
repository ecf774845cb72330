package frontend

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"

	hafesql "hafe.dev/hafe/sql"
)

// TestUTF8IsCheckedAcrossReads: a multi-byte character cut by a read is
// accepted whole, a sequence cut by the end of the body is refused.
func TestUTF8IsCheckedAcrossReads(t *testing.T) {
	ok := `{"transactions":[{"template":"open_account","args":{"id":1000,"owner":"Zoë 😀 €","balance":1}}]}`
	if _, err := decodeBatch(iotest.OneByteReader(strings.NewReader(ok)), hafesql.Builtin(), false, Limits{}.withDefaults()); err != nil {
		t.Fatalf("valid UTF-8 read a byte at a time: %v", err)
	}
	for _, bad := range []string{ok + "\xf0\x9f", strings.Replace(ok, "😀", "\xf0\x9f\x98", 1), strings.Replace(ok, "ë", "\xc0\xab", 1)} {
		_, err := decodeBatch(iotest.OneByteReader(strings.NewReader(bad)), hafesql.Builtin(), false, Limits{}.withDefaults())
		var re *requestError
		if !errors.As(err, &re) || re.code != "bad_json" || !strings.Contains(re.message, "UTF-8") {
			t.Fatalf("%q: %v, want bad_json naming UTF-8", bad, err)
		}
	}
}

// wholeRequestHash is how the request hash was computed when the body was
// decoded whole: SHA-256 of json.Marshal of the request. Batches stored
// under it must keep matching their retries.
func wholeRequestHash(t *testing.T, body string) []byte {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(body))
	dec.UseNumber()
	var req batchRequest
	if err := dec.Decode(&req); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return sum[:]
}

func TestStreamedRequestHashIsTheWholeRequestsHash(t *testing.T) {
	for _, body := range []string{
		`{"transactions":[{"template":"deposit","args":{"id":1,"amount":1.50}}]}`,
		`{"isolation":"serializable","transactions":[{"template":"transfer","args":{"to":2,"from":1,"amount":"10"}},{"template":"balance","args":{"id":1}}]}`,
		` { "transactions" : [ { "sql" : [ { "query" : "SELECT $1::jsonb, $2", "args" : [ {"b":[1,2,{"z":null,"a":"<&>"}],"a":true}, 1e400 ] } ] } ] , "isolation" : "read committed" } `,
		`{"transactions":[{"sql":[{"query":"SELECT 'caf\u00e9'"}]},{"template":"deposit","args":{"id":1,"amount":1}}],"isolation":""}`,
	} {
		got, err := decodeBatch(strings.NewReader(body), hafesql.Builtin(), true, Limits{}.withDefaults())
		if err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		if want := wholeRequestHash(t, body); !bytes.Equal(got.hash, want) {
			t.Errorf("%s: streamed hash %x, whole-request hash %x", body, got.hash, want)
		}
	}
}

// A transaction or batch with more JSON values than the limits, or nested
// too deep, is refused while it is read, before it is decoded.
func TestValueCountAndDepthAreBoundedWhileReading(t *testing.T) {
	lim := Limits{MaxTxnValues: 100, MaxBatchValues: 250}.withDefaults()
	args := func(n int) string { return strings.TrimSuffix(strings.Repeat("1,", n), ",") }
	txn := func(n int) string { return `{"sql":[{"query":"SELECT 1","args":[` + args(n) + `]}]}` }
	for _, tt := range []struct {
		name, body string
		status     int
		code       string
	}{
		{"transaction within the limit", `{"transactions":[` + txn(90) + `]}`, 0, ""},
		{"transaction over the limit", `{"transactions":[` + txn(120) + `]}`, 413, "too_many_values"},
		{"batch over the limit", `{"transactions":[` + strings.Repeat(txn(90)+",", 2) + txn(90) + `]}`, 413, "too_many_values"},
		{"commas in strings do not count", `{"transactions":[{"sql":[{"query":"SELECT '` + strings.Repeat(",", 500) + `'"}]}]}`, 0, ""},
		{"nested too deep", `{"transactions":[{"sql":[{"query":"SELECT $1::jsonb","args":[` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `]}]}]}`, 400, "bad_json"},
	} {
		_, err := decodeBatch(strings.NewReader(tt.body), hafesql.Builtin(), true, lim)
		var re *requestError
		switch {
		case tt.status == 0 && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case tt.status != 0 && (!errors.As(err, &re) || re.status != tt.status || re.code != tt.code):
			t.Errorf("%s: %v, want %d %s", tt.name, err, tt.status, tt.code)
		}
	}
}

// TestDecodingMemoryIsBoundedByTheBody: decoding a body just under the
// 8 MiB limit takes at most 4 times its size in heap at its peak, whatever
// it is made of: accepted shapes are decoded a transaction at a time, and
// shapes that would cost more (millions of tiny values) are refused as
// they are read.
func TestDecodingMemoryIsBoundedByTheBody(t *testing.T) {
	if testing.Short() {
		t.Skip("decodes 32 MiB of bodies")
	}
	for name, body := range bodyShapes() {
		var err error
		var keep *decodedBatch
		peak := peakHeapDuring(func() {
			keep, err = decodeBatch(bytes.NewReader(body), hafesql.Builtin(), true, Limits{}.withDefaults())
		})
		runtime.KeepAlive(keep)
		var re *requestError
		refused := errors.As(err, &re) && re.code == "too_many_values"
		if err != nil && !refused {
			t.Errorf("%s: %v", name, err)
		}
		ratio := float64(peak) / float64(len(body))
		t.Logf("%s: %.1f MiB body, peak heap %.2fx the body, refused %v", name, float64(len(body))/(1<<20), ratio, refused)
		if ratio > 4 {
			t.Errorf("%s: peak heap %.2fx the body, want at most 4x", name, ratio)
		}
	}
}
