package frontend

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	hafesql "hafe.dev/hafe/sql"
)

// bodyShapes are request bodies just under the 8 MiB limit, each made of
// what costs most per byte to decode.
func bodyShapes() map[string][]byte {
	const target = 8<<20 - 64<<10
	shapes := map[string][]byte{}
	fill := func(name, head, item, sep, tail string) {
		var b bytes.Buffer
		b.WriteString(head)
		for i := 0; b.Len()+len(item)+len(tail) < target; i++ {
			if i > 0 {
				b.WriteString(sep)
			}
			b.WriteString(item)
		}
		b.WriteString(tail)
		shapes[name] = b.Bytes()
	}
	big := strings.Repeat("x", 60<<10)
	fill("large statements", `{"transactions":[`, `{"sql":[{"query":"SELECT '`+big+`'"}]}`, ",", `]}`)
	fill("many numeric args", `{"transactions":[{"sql":[{"query":"SELECT 1","args":[`, `1`, ",", `]}]}]}`)
	fill("nested arg", `{"transactions":[{"sql":[{"query":"SELECT $1::jsonb","args":[[`, `[]`, ",", `]]}]}]}`)
	var tx []string
	for i := 0; i < 10000; i++ {
		tx = append(tx, fmt.Sprintf(`{"template":"transfer","args":{"from":%d,"to":%d,"amount":"%s"}}`, i%10+1, i%7+1, strings.Repeat("1", 700)))
	}
	shapes["10000 templates"] = []byte(`{"transactions":[` + strings.Join(tx, ",") + `]}`)
	return shapes
}

// peakHeapDuring samples the heap while f runs and returns its highest
// value above the heap at the start.
func peakHeapDuring(f func()) uint64 {
	var base runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			if m.HeapAlloc > peak.Load() {
				peak.Store(m.HeapAlloc)
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	f()
	close(stop)
	<-done
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	p := max(peak.Load(), m.HeapAlloc)
	return p - min(p, base.HeapAlloc)
}

// BenchmarkDecodeMemory reports, per body shape, the peak heap while a
// body just under the 8 MiB limit is decoded, as a multiple of the body
// (peak/body); shapes made of millions of tiny values are refused as they
// are read. TestDecodingMemoryIsBoundedByTheBody holds it to 4x.
func BenchmarkDecodeMemory(b *testing.B) {
	for name, body := range bodyShapes() {
		b.Run(strings.ReplaceAll(name, " ", "_"), func(b *testing.B) {
			var worst float64
			for b.Loop() {
				var err error
				var keep *decodedBatch
				peak := peakHeapDuring(func() {
					keep, err = decodeBatch(bytes.NewReader(body), hafesql.Builtin(), true, Limits{}.withDefaults())
				})
				var re *requestError
				if err != nil && !(errors.As(err, &re) && re.code == "too_many_values") {
					b.Fatal(err)
				}
				runtime.KeepAlive(keep)
				worst = max(worst, float64(peak)/float64(len(body)))
			}
			b.ReportMetric(worst, "peak/body")
			b.ReportMetric(float64(len(body))/(1<<20), "body-MiB")
		})
	}
}
