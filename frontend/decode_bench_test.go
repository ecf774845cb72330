package frontend

import (
	"strings"
	"testing"

	hafesql "hafe.dev/hafe/sql"
)

// BenchmarkDecodeBatch decodes a batch of 5000 template transactions, as a
// front-end does when the batch arrives and again when it takes the
// batch's MTCP connection over: that second decode is part of the
// client's stall.
func BenchmarkDecodeBatch(b *testing.B) {
	txns := make([]string, 5000)
	for i := range txns {
		txns[i] = transferTxn(1+i%50, 51+i%50, "0.01")
	}
	body := batchBody(txns...)
	cat := hafesql.Builtin()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := decodeBatch(strings.NewReader(body), cat, false, Limits{}.withDefaults()); err != nil {
			b.Fatal(err)
		}
	}
}
