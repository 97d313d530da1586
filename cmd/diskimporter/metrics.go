package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/reason"
)

// importMetrics are the Prometheus metrics of one import, in a registry of
// their own (never the global one), fed from Options.OnProgress and the
// retry warnings of the log.
//
// Byte counts are gauges: they restart at zero when the phase changes and
// when an upload retry reads the disk again, and a counter must never go
// down.
type importMetrics struct {
	reg *prometheus.Registry
	now func() time.Time

	transferred prometheus.Gauge
	expected    prometheus.Gauge
	ratio       prometheus.Gauge
	current     prometheus.Gauge
	average     prometheus.Gauge
	phase       *prometheus.GaugeVec
	retries     *prometheus.CounterVec
	result      *prometheus.GaugeVec

	mu    sync.Mutex // serialises report and finish
	start time.Time
	end   time.Time // zero while running
	rate  rateMeter

	finished     atomic.Bool
	scrapedFinal chan struct{} // closed by the first scrape begun after finish
	scrapedOnce  sync.Once
}

// The phases of diskimporter_phase, all exported from the start.
var metricPhases = []importer.Phase{importer.PhaseDownloading, importer.PhaseSpooling,
	importer.PhasePushing, importer.PhaseDone, importer.PhaseFailed}

// newImportMetrics returns the metrics of an import starting now.
func newImportMetrics(now func() time.Time) *importMetrics {
	if now == nil {
		now = time.Now
	}
	g := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	}
	m := &importMetrics{
		reg: prometheus.NewRegistry(),
		now: now,
		transferred: g("diskimporter_transferred_bytes",
			"Bytes the current phase has moved; back to 0 when the phase changes or an upload retry reads the disk again."),
		expected: g("diskimporter_expected_bytes",
			"Bytes the current phase will move; 0 while unknown."),
		ratio: g("diskimporter_progress_ratio",
			"diskimporter_transferred_bytes / diskimporter_expected_bytes, 0 to 1; 0 while the total is unknown."),
		current: g("diskimporter_throughput_bytes_per_second",
			"Recent rate of the current phase: over the last 3 s, or the last report interval when longer; 0 once the import ended."),
		average: g("diskimporter_average_throughput_bytes_per_second",
			"Average rate of the current phase since it began."),
		phase: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "diskimporter_phase",
			Help: "1 for the current phase (downloading, spooling, pushing, done, failed), 0 for the others."}, []string{"phase"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "diskimporter_retries_total",
			Help: "Retries: source reads resumed after a failure (kind=source), disk re-reads for an upload retry (kind=upload)."}, []string{"kind"}),
		result: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "diskimporter_result",
			Help: "Set to 1 when the import ended: result=success, or result=failure with the failure reason; absent while running."}, []string{"result", "reason"}),
		scrapedFinal: make(chan struct{}),
	}
	m.start = now()
	duration := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "diskimporter_import_duration_seconds",
		Help: "Wall time of the import so far; its total once it ended."}, m.elapsed)
	for _, p := range metricPhases {
		m.phase.WithLabelValues(string(p))
	}
	m.retries.WithLabelValues(importer.RetrySource)
	m.retries.WithLabelValues(importer.RetryUpload)
	m.reg.MustRegister(m.transferred, m.expected, m.ratio, m.current, m.average, duration,
		m.phase, m.retries, m.result,
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector())
	return m
}

// report is the metrics' Options.OnProgress.
func (m *importMetrics) report(p importer.Progress) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	m.transferred.Set(float64(p.Bytes))
	m.expected.Set(float64(max(p.Total, 0)))
	m.ratio.Set(min(p.Percent()/100, 1))
	m.average.Set(p.BytesPerSecond)
	final := p.Phase == importer.PhaseDone || p.Phase == importer.PhaseFailed
	rate, ok := m.rate.add(p, now)
	switch {
	case final:
		rate = 0
	case !ok: // the first report of a phase
		rate = p.BytesPerSecond
	}
	m.current.Set(rate)
	for _, ph := range metricPhases {
		v := 0.0
		if ph == p.Phase {
			v = 1
		}
		m.phase.WithLabelValues(string(ph)).Set(v)
	}
}

// elapsed is the import's wall time, up to now or to its end.
func (m *importMetrics) elapsed() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	end := m.end
	if end.IsZero() {
		end = m.now()
	}
	return end.Sub(m.start).Seconds()
}

// retried is the import's Options.OnRetry: it counts the retry by stage.
func (m *importMetrics) retried(r importer.Retry) {
	m.retries.WithLabelValues(r.Stage).Inc()
}

// finish records the end of the import: err nil for a success. It may be
// called once; later calls do nothing.
func (m *importMetrics) finish(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.finished.Load() {
		return
	}
	if err != nil {
		m.result.WithLabelValues("failure", string(reason.Of(err))).Set(1)
	} else {
		m.result.WithLabelValues("success", "").Set(1)
	}
	m.current.Set(0)
	m.end = m.now()
	m.finished.Store(true)
}

// handler serves the registry in the Prometheus text (or protobuf)
// exposition format.
func (m *importMetrics) handler() http.Handler {
	h := promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		final := m.finished.Load()
		h.ServeHTTP(w, r)
		if final {
			m.scrapedOnce.Do(func() { close(m.scrapedFinal) })
		}
	})
}

// metricsServer serves /metrics, and nothing else, on a listener of its own.
type metricsServer struct {
	srv  *http.Server
	addr string
	m    *importMetrics
}

// serveMetrics listens on addr at once, so that an address in use fails the
// import before a byte moves, and serves m's /metrics on its own mux.
func serveMetrics(addr string, m *importMetrics, logger *slog.Logger) (*metricsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-address %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.handler())
	s := &metricsServer{
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		addr: ln.Addr().String(),
		m:    m,
	}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("metrics server stopped", "error", err)
		}
	}()
	logger.Info("serving metrics", "address", s.addr, "path", "/metrics")
	return s, nil
}

// linger keeps serving the final values after the import, for up to d,
// until a scrape begun after the end has read them, or until ctx is done
// (SIGTERM). It does nothing on a nil server or for d <= 0.
func (s *metricsServer) linger(ctx context.Context, d time.Duration, logger *slog.Logger) {
	if s == nil || d <= 0 {
		return
	}
	logger.Info("serving the final metrics until scraped", "address", s.addr, "at_most", d.String())
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.m.scrapedFinal:
	case <-ctx.Done():
	}
}

// stop closes the listener, giving a scrape in progress a second.
func (s *metricsServer) stop() {
	if s == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
}
