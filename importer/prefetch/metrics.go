package prefetch

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the endpoint's Prometheus metrics. A nil *Metrics counts
// nothing.
type Metrics struct {
	requests *prometheus.CounterVec
	blobs    *prometheus.CounterVec
	bytes    prometheus.Counter
	duration prometheus.Histogram
}

// NewMetrics registers the metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "diskimporter_prefetch_requests_total",
			Help: "Prefetch requests answered, by status (success, failure, accepted) and HTTP code.",
		}, []string{"status", "code"}),
		blobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "diskimporter_prefetch_blobs_total",
			Help: "Blobs of prefetched images, by what was done (fetched, skipped: present already or outside the size bounds).",
		}, []string{"action"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "diskimporter_prefetch_bytes_total",
			Help: "Blob bytes fetched into the node's content store.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "diskimporter_prefetch_duration_seconds",
			Help:    "Time to answer a prefetch request (for an asynchronous one, to accept it).",
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 10),
		}),
	}
	reg.MustRegister(m.requests, m.blobs, m.bytes, m.duration)
	return m
}

// request counts one answered request.
func (m *Metrics) request(status string, code int, took time.Duration) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(status, strconv.Itoa(code)).Inc()
	m.duration.Observe(took.Seconds())
}

// outcome counts what one warm did.
func (m *Metrics) outcome(o Outcome) {
	if m == nil {
		return
	}
	m.blobs.WithLabelValues("fetched").Add(float64(o.Fetched))
	m.blobs.WithLabelValues("skipped").Add(float64(o.Skipped))
	m.bytes.Add(float64(o.Bytes))
}
