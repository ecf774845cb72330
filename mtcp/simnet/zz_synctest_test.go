//go:build simnet

package simnet

import (
	"bytes"
	"testing"
	"testing/synctest"
	"time"
)

func TestZZSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tp := newTopology(t, LinkConfig{Delay: 50 * time.Millisecond})
		client, server := tp.connPair(t)
		go echo(server)
		start := time.Now()
		data := randomBytes(1, 10000)
		got := roundTrip(t, client, data)
		if !bytes.Equal(got, data) {
			t.Fatal("mismatch")
		}
		t.Logf("took %v virtual", time.Since(start))
		client.Close()
		tp.net.Close()
	})
}
