package agent

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"hafe.dev/hafe/mtcp"
)

// Metrics are an agent's Prometheus metrics, in a registry of their own.
// A nil *Metrics counts nothing.
type Metrics struct {
	registry   *prometheus.Registry
	open       prometheus.Gauge
	conns      *prometheus.CounterVec
	migrations *prometheus.CounterVec
	migSeconds *prometheus.HistogramVec
	relayed    *prometheus.CounterVec
	upBytes    prometheus.Counter
	downBytes  prometheus.Counter
}

// NewMetrics returns an agent's metrics.
func NewMetrics() *Metrics {
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hafe_agent_connections", Help: "Local connections being relayed over MTCP now.",
		}),
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hafe_agent_connections_total",
			Help: "Local connections accepted, by result: ok (both directions ended with an end of stream), aborted (reset: the client went away, or the MTCP connection was lost), dial_failed (no front-end took it; reset).",
		}, []string{"result"}),
		migrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hafe_agent_migrations_total",
			Help: "Migrations of the agent's MTCP connections, by trigger (path_failure, rate, redirect, request) and result (ok, failed).",
		}, []string{"trigger", "result"}),
		migSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hafe_agent_migration_seconds",
			Help:    "Successful migrations' phases as the agent saw them: initiate (dial or take the standby path, send MIGRATE), wait (for ACCEPTED), complete (reattach and resend), total.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 4, 10),
		}, []string{"phase"}),
		relayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hafe_agent_relayed_bytes_total", Help: "Bytes relayed, by direction (up: client to front-end; down: front-end to client).",
		}, []string{"direction"}),
	}
	m.upBytes = m.relayed.WithLabelValues("up")
	m.downBytes = m.relayed.WithLabelValues("down")
	for _, r := range []string{"ok", "aborted", "dial_failed"} {
		m.conns.WithLabelValues(r)
	}
	for _, t := range []string{mtcp.TriggerPathFailure, mtcp.TriggerRate, mtcp.TriggerRedirect, mtcp.TriggerRequest} {
		for _, r := range []string{"ok", "failed"} {
			m.migrations.WithLabelValues(t, r)
		}
	}
	m.registry.MustRegister(m.open, m.conns, m.migrations, m.migSeconds, m.relayed)
	return m
}

// Handler serves the metrics in Prometheus' text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
}

// Registry is where the metrics are registered.
func (m *Metrics) Registry() *prometheus.Registry { return m.registry }

func (m *Metrics) opened() {
	if m != nil {
		m.open.Inc()
	}
}

func (m *Metrics) closed(result string) {
	if m != nil {
		m.open.Dec()
		m.conns.WithLabelValues(result).Inc()
	}
}

func (m *Metrics) connection(result string) {
	if m != nil {
		m.conns.WithLabelValues(result).Inc()
	}
}

func (m *Metrics) migration(s mtcp.MigrationStats) {
	if m == nil {
		return
	}
	result := "ok"
	if s.Err != nil {
		result = "failed"
	}
	m.migrations.WithLabelValues(s.Trigger, result).Inc()
	if s.Err == nil {
		m.migSeconds.WithLabelValues("initiate").Observe(s.Initiate.Seconds())
		m.migSeconds.WithLabelValues("wait").Observe(s.Wait.Seconds())
		m.migSeconds.WithLabelValues("complete").Observe(s.Complete.Seconds())
		m.migSeconds.WithLabelValues("total").Observe(s.Total().Seconds())
	}
}

type direction bool

const (
	up   direction = true
	down direction = false
)

// bytes returns the counter of one direction's bytes.
func (m *Metrics) bytes(d direction) func(int) {
	if m == nil {
		return func(int) {}
	}
	c := m.downBytes
	if d == up {
		c = m.upBytes
	}
	return func(n int) { c.Add(float64(n)) }
}
