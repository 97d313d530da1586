package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/diskimporter/diskimporter/importer"
)

// scrape returns the samples of a /metrics answer by series ("name" or
// `name{label="value",...}`), and the HELP and TYPE lines by name.
func scrape(t *testing.T, h http.Handler) (samples map[string]float64, types map[string]string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", rec.Code, rec.Body)
	}
	return parseExposition(t, rec.Body)
}

func parseExposition(t *testing.T, r io.Reader) (samples map[string]float64, types map[string]string) {
	t.Helper()
	samples, types = map[string]float64{}, map[string]string{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, typ, _ := strings.Cut(rest, " ")
			types[name] = typ
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("sample %q: %v", line, err)
		}
		samples[line[:i]] = v
	}
	return samples, types
}

// metricTypes are the metrics of an import and their types.
var metricTypes = map[string]string{
	"diskimporter_transferred_bytes":                   "gauge",
	"diskimporter_expected_bytes":                      "gauge",
	"diskimporter_progress_ratio":                      "gauge",
	"diskimporter_throughput_bytes_per_second":         "gauge",
	"diskimporter_average_throughput_bytes_per_second": "gauge",
	"diskimporter_import_duration_seconds":             "gauge",
	"diskimporter_phase":                               "gauge",
	"diskimporter_retries_total":                       "counter",
	"diskimporter_result":                              "gauge",
}

func TestMetrics(t *testing.T) {
	clock := time.Unix(1000, 0)
	m := newImportMetrics(func() time.Time { return clock })
	samples, types := scrape(t, m.handler())
	for name, typ := range metricTypes {
		if name != "diskimporter_result" && types[name] != typ {
			t.Errorf("before any report: %s has type %q, want %s", name, types[name], typ)
		}
	}
	if _, ok := types["diskimporter_result"]; ok {
		t.Error("diskimporter_result exported while the import runs")
	}
	for _, series := range []string{`diskimporter_phase{phase="pushing"}`, `diskimporter_retries_total{kind="upload"}`, "process_cpu_seconds_total", "go_goroutines"} {
		if _, ok := samples[series]; !ok {
			t.Errorf("no %s before any report", series)
		}
	}

	report := func(secs int, p importer.Progress) {
		clock = time.Unix(1000+int64(secs), 0)
		m.report(p)
	}
	const total = 4 << 30
	report(1, importer.Progress{Phase: importer.PhaseDownloading})
	report(2, importer.Progress{Phase: importer.PhasePushing, Bytes: 1 << 30, Total: total, BytesPerSecond: 1 << 30})
	report(4, importer.Progress{Phase: importer.PhasePushing, Bytes: 2 << 30, Total: total, BytesPerSecond: 1 << 29})
	m.retried(importer.Retry{Stage: importer.RetrySource, Offset: 1})
	m.retried(importer.Retry{Stage: importer.RetrySource, Offset: 2})
	m.retried(importer.Retry{Stage: importer.RetryUpload})

	samples, _ = scrape(t, m.handler())
	want := map[string]float64{
		"diskimporter_transferred_bytes":                   2 << 30,
		"diskimporter_expected_bytes":                      total,
		"diskimporter_progress_ratio":                      0.5,
		"diskimporter_throughput_bytes_per_second":         (1 << 30) / 2.0, // over the 2 s between the reports
		"diskimporter_average_throughput_bytes_per_second": 1 << 29,
		"diskimporter_import_duration_seconds":             4,
		`diskimporter_phase{phase="pushing"}`:              1,
		`diskimporter_phase{phase="downloading"}`:          0,
		`diskimporter_phase{phase="done"}`:                 0,
		`diskimporter_retries_total{kind="source"}`:        2,
		`diskimporter_retries_total{kind="upload"}`:        1,
	}
	check := func(when string, want map[string]float64) {
		t.Helper()
		for series, v := range want {
			if got, ok := samples[series]; !ok || got != v {
				t.Errorf("%s: %s = %v (found %v), want %v", when, series, got, ok, v)
			}
		}
	}
	check("pushing", want)

	// An upload retry: the bytes go down, and so do the gauges.
	report(5, importer.Progress{Phase: importer.PhasePushing, Bytes: 1 << 20, Total: total, BytesPerSecond: 1 << 20})
	samples, _ = scrape(t, m.handler())
	check("after an upload retry", map[string]float64{
		"diskimporter_transferred_bytes":           1 << 20,
		"diskimporter_progress_ratio":              1.0 / 4096,
		"diskimporter_throughput_bytes_per_second": 1 << 20, // the average until a new rate is known
	})

	report(9, importer.Progress{Phase: importer.PhaseDone, Bytes: total, Total: total, BytesPerSecond: 1 << 30})
	m.finish(nil)
	m.finish(fmt.Errorf("%w: too late", importer.ErrSourceNotFound)) // once only
	samples, _ = scrape(t, m.handler())
	check("done", map[string]float64{
		"diskimporter_progress_ratio":                     1,
		"diskimporter_throughput_bytes_per_second":        0,
		`diskimporter_phase{phase="done"}`:                1,
		`diskimporter_phase{phase="pushing"}`:             0,
		`diskimporter_result{reason="",result="success"}`: 1,
		"diskimporter_import_duration_seconds":            9,
	})
	for series := range samples {
		if strings.HasPrefix(series, "diskimporter_result{") && series != `diskimporter_result{reason="",result="success"}` {
			t.Errorf("another result: %s", series)
		}
	}
}

func TestMetricsFailure(t *testing.T) {
	m := newImportMetrics(nil)
	m.report(importer.Progress{Phase: importer.PhaseFailed, Bytes: 5})
	m.finish(fmt.Errorf("%w: 404", importer.ErrSourceNotFound))
	samples, _ := scrape(t, m.handler())
	if samples[`diskimporter_result{reason="SourceNotFound",result="failure"}`] != 1 || samples[`diskimporter_phase{phase="failed"}`] != 1 {
		t.Errorf("samples %v", samples)
	}
}

// TestServeMetrics: /metrics and nothing else on a listener of its own; an
// address in use fails at once; linger ends at the first scrape of the
// final values.
func TestServeMetrics(t *testing.T) {
	var logs bytes.Buffer
	logger, _ := newConsole(&logs, progressLog).newLogger("text")
	m := newImportMetrics(nil)
	srv, err := serveMetrics("127.0.0.1:0", m, logger)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.stop()
	if !strings.Contains(logs.String(), "msg=\"serving metrics\" address="+srv.addr) {
		t.Errorf("logs %q", logs.String())
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}
	get := func(path string) (int, string) {
		resp, err := client.Get("http://" + srv.addr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	m.report(importer.Progress{Phase: importer.PhasePushing, Bytes: 1, Total: 2})
	if code, body := get("/metrics"); code != http.StatusOK || !strings.Contains(body, `diskimporter_phase{phase="pushing"} 1`) {
		t.Errorf("GET /metrics: %d\n%s", code, body)
	}
	for _, p := range []string{"/", "/debug/pprof/", "/debug/vars", "/metrics/x"} {
		if code, _ := get(p); code != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", p, code)
		}
	}

	if _, err := serveMetrics(srv.addr, newImportMetrics(nil), logger); err == nil ||
		!strings.Contains(err.Error(), "--metrics-address "+srv.addr) {
		t.Errorf("a second server on %s: %v", srv.addr, err)
	}

	// No linger asked, or no server: return at once.
	start := time.Now()
	srv.linger(t.Context(), 0, logger)
	(*metricsServer)(nil).linger(t.Context(), time.Hour, logger)
	// A scrape begun before the end does not end the linger; one after it does.
	m.finish(nil)
	lingered := make(chan struct{})
	go func() {
		srv.linger(context.Background(), time.Minute, logger)
		close(lingered)
	}()
	select {
	case <-lingered:
		t.Fatal("linger returned before a scrape")
	case <-time.After(50 * time.Millisecond):
	}
	if code, body := get("/metrics"); code != http.StatusOK || !strings.Contains(body, `diskimporter_result{reason="",result="success"} 1`) {
		t.Errorf("final scrape: %d\n%s", code, body)
	}
	select {
	case <-lingered:
	case <-time.After(5 * time.Second):
		t.Fatal("linger did not end after the final scrape")
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("took %v", took)
	}
	// A signal ends it too.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	m2 := newImportMetrics(nil)
	srv2, err := serveMetrics("127.0.0.1:0", m2, logger)
	if err != nil {
		t.Fatal(err)
	}
	srv2.linger(ctx, time.Hour, logger)
	srv2.stop()
	// Not a dial: another test's listener may take the freed port.
	if resp, err := http.Get("http://" + srv2.addr + "/metrics"); err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), "diskimporter_") {
			t.Error("the metrics are still served after stop")
		}
	}
}
