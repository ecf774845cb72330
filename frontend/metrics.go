package frontend

import (
	"encoding/json"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are one front-end's Prometheus metrics, in a registry of its own.
type metrics struct {
	registry     *prometheus.Registry
	batches      *prometheus.CounterVec
	transactions *prometheus.CounterVec
	refused      *prometheus.CounterVec
	reported     prometheus.Counter
	resumed      prometheus.Counter
	batchSeconds prometheus.Histogram
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hafe_batches_total", Help: "Batches that ended, by result (done, interrupted).",
		}, []string{"result"}),
		transactions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hafe_transactions_total", Help: "Transactions reported in finished or interrupted batches, by status.",
		}, []string{"status"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hafe_requests_refused_total", Help: "Requests refused before running anything, by error code.",
		}, []string{"code"}),
		reported: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hafe_reports_sent_total", Help: "Transaction report lines sent to clients.",
		}),
		resumed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hafe_batches_resumed_total", Help: "Batches resumed from an earlier request with the same Idempotency-Key.",
		}),
		batchSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "hafe_batch_duration_seconds", Help: "Time from request to last line of a batch.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}),
	}
	m.registry.MustRegister(m.batches, m.transactions, m.refused, m.reported, m.resumed, m.batchSeconds,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
