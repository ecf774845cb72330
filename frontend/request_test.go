package frontend

import (
	"errors"
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
