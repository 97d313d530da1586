package e2e

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diskimporter/diskimporter/importer/testdisk"
)

// metricSamples parses a Prometheus text exposition into samples by series
// (`name{label="value"}`) and types by name.
func metricSamples(t *testing.T, body []byte) (samples map[string]float64, types map[string]string) {
	t.Helper()
	samples, types = map[string]float64{}, map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(body))
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
			t.Fatalf("metrics line %q: %v", line, err)
		}
		samples[line[:i]] = v
	}
	return samples, types
}

// TestMetricsDuringImport scrapes --metrics-address while the binary
// imports the throttled source, then once more after the result was
// printed, which ends --metrics-linger early.
func TestMetricsDuringImport(t *testing.T) {
	needE2E(t)
	t.Parallel()

	addr := freeAddr(t)
	repo := newRepo(t)
	dest := reg.Addr + "/" + repo + ":v1"
	ctx, cancel := context.WithTimeout(t.Context(), cliTimeout)
	defer cancel()
	uri := "/slow.img?run=" + strings.ReplaceAll(repo, "/", "-")
	const linger = 30 * time.Second
	args := importArgs(reg, src.URL+uri, dest, "--metrics-address", addr,
		"--progress-interval", "250ms", "--metrics-linger", linger.String())
	cmd := command(ctx, childEnv(t, credsEnv(reg)...), args...)
	stdout, stderr := &logSink{}, &logSink{}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(exited) }()
	defer func() { <-exited }()

	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}}
	scrapeOnce := func() ([]byte, error) {
		resp, err := client.Get("http://" + addr + "/metrics")
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /metrics: %s\n%s", resp.Status, b)
		}
		return b, err
	}

	// Scrape until the import is pushing with bytes moved.
	var during []byte
	for {
		b, err := scrapeOnce()
		if err == nil {
			s, _ := metricSamples(t, b)
			if s[`diskimporter_phase{phase="pushing"}`] == 1 && s["diskimporter_transferred_bytes"] > 0 &&
				s["diskimporter_throughput_bytes_per_second"] > 0 {
				during = b
				break
			}
		}
		select {
		case <-exited:
			t.Fatalf("import exited before a scrape saw it pushing (%v):\n%s", waitErr, stderr.Bytes())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("no scrape saw the import pushing (last error %v):\n%s", err, stderr.Bytes())
		}
	}
	if len(stdout.Bytes()) != 0 {
		t.Errorf("the result was printed before the scrape that saw the import pushing")
	}
	var lines []string
	for line := range strings.Lines(string(during)) {
		if strings.HasPrefix(line, "diskimporter_") {
			lines = append(lines, strings.TrimSpace(line))
		}
	}
	t.Logf("scrape during the import, %v after the start:\n%s", time.Since(start).Round(time.Millisecond), strings.Join(lines, "\n"))

	samples, types := metricSamples(t, during)
	for name, typ := range map[string]string{
		"diskimporter_transferred_bytes":                   "gauge",
		"diskimporter_expected_bytes":                      "gauge",
		"diskimporter_progress_ratio":                      "gauge",
		"diskimporter_throughput_bytes_per_second":         "gauge",
		"diskimporter_average_throughput_bytes_per_second": "gauge",
		"diskimporter_import_duration_seconds":             "gauge",
		"diskimporter_phase":                               "gauge",
		"diskimporter_retries_total":                       "counter",
		"process_cpu_seconds_total":                        "counter",
	} {
		if types[name] != typ {
			t.Errorf("%s: type %q, want %s", name, types[name], typ)
		}
	}
	if _, ok := types["diskimporter_result"]; ok {
		t.Error("diskimporter_result exported while the import runs")
	}
	if got := samples["diskimporter_expected_bytes"]; got != slowSize {
		t.Errorf("diskimporter_expected_bytes %v, want %d", got, slowSize)
	}
	if r := samples["diskimporter_progress_ratio"]; r <= 0 || r >= 1 {
		t.Errorf("diskimporter_progress_ratio %v during the import", r)
	}
	// The source serves slowRate bytes per second.
	if tp := samples["diskimporter_average_throughput_bytes_per_second"]; tp <= 0 || tp > 2*slowRate {
		t.Errorf("average throughput %v, the source serves %d/s", tp, slowRate)
	}

	// The result is printed, then the final values are served until
	// scraped.
	for !bytes.HasSuffix(stdout.Bytes(), []byte("\n")) {
		select {
		case <-exited:
			t.Fatalf("import exited without lingering (%v):\n%s", waitErr, stderr.Bytes())
		case <-time.After(50 * time.Millisecond):
		}
	}
	final, err := scrapeOnce()
	if err != nil {
		t.Fatalf("scrape after the result: %v", err)
	}
	samples, _ = metricSamples(t, final)
	for series, want := range map[string]float64{
		`diskimporter_result{reason="",result="success"}`: 1,
		`diskimporter_phase{phase="done"}`:                1,
		`diskimporter_phase{phase="pushing"}`:             0,
		"diskimporter_transferred_bytes":                  slowSize,
		"diskimporter_progress_ratio":                     1,
		"diskimporter_throughput_bytes_per_second":        0,
		`diskimporter_retries_total{kind="source"}`:       0,
	} {
		if got, ok := samples[series]; !ok || got != want {
			t.Errorf("after the end: %s = %v (found %v), want %v", series, got, ok, want)
		}
	}
	scraped := time.Now()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("still lingering 10s after the final scrape (--metrics-linger %v)", linger)
	}
	t.Logf("exited %v after the final scrape", time.Since(scraped).Round(time.Millisecond))

	run := &run{args: args, stdout: stdout.Bytes(), stderr: stderr.Bytes(), took: time.Since(start)}
	if waitErr != nil {
		t.Fatalf("import: %v\n%s", waitErr, run)
	}
	res := parseSuccess(t, run)
	verify(t, res, want{dest: dest, source: src.URL + "/slow.img?REDACTED", sha256: src.slowSum, size: slowSize, format: "raw", diskName: "disk.img"})
	var serving, lingering bool
	for _, rec := range checkJSONLogs(t, run, 0) {
		serving = serving || rec["msg"] == "serving metrics" && rec["address"] == addr
		lingering = lingering || rec["msg"] == "serving the final metrics until scraped"
	}
	if !serving || !lingering {
		t.Errorf("logs: serving metrics %v, lingering %v", serving, lingering)
	}
	if n := src.gets(uri); n != 1 {
		t.Errorf("slow source requested %d times, want 1", n)
	}
}

// TestMetricsAddressInUse: an InvalidOptions failure before the source is
// asked for a byte, as with --pprof-address.
func TestMetricsAddressInUse(t *testing.T) {
	needE2E(t)
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	repo := newRepo(t)
	uri := "/raw8.img?run=" + strings.ReplaceAll(repo, "/", "-")
	resultFile := filepath.Join(t.TempDir(), "result.json")
	r := runImport(t, childEnv(t, credsEnv(reg)...), importArgs(reg, src.URL+uri, reg.Addr+"/"+repo+":v1",
		"--metrics-address", l.Addr().String(), "--result-file", resultFile)...)
	checkFailure(t, r, "InvalidOptions")
	if !strings.Contains(lastLine(r.stderr), "--metrics-address "+l.Addr().String()) || !strings.Contains(lastLine(r.stderr), "address already in use") {
		t.Errorf("last stderr line %q", lastLine(r.stderr))
	}
	var f failureResult
	readResultFile(t, resultFile, &f)
	if f.Reason != "InvalidOptions" {
		t.Errorf("result file %+v", f)
	}
	if n := src.gets(uri); n != 0 {
		t.Errorf("the source was requested %d times", n)
	}
	checkNoTag(t, reg, repo, "v1")
}

// TestSourceHeaderCLI: malformed source headers are usage errors before
// anything moves, never echoing the value; good ones, from the
// environment and from a file, reach the source and nowhere else.
func TestSourceHeaderCLI(t *testing.T) {
	needE2E(t)
	t.Parallel()
	const token, key = "tok-7f3a9c", "key-51be2d"

	t.Run("malformed", func(t *testing.T) {
		t.Parallel()
		repo := newRepo(t)
		uri := "/raw8.img?run=" + strings.ReplaceAll(repo, "/", "-")
		for _, c := range []struct {
			name   string
			args   []string
			env    []string
			stderr string
		}{
			{name: "flag", args: []string{"--source-header", "Authorization Bearer " + token}, stderr: "diskimporter import: --source-header #1: want 'Name: value'"},
			{name: "unquoted on a shell", args: []string{"--source-header", "Authorization:", "Bearer", token},
				stderr: "diskimporter import: --source-header #1: header Authorization has an empty value (quote the whole header"},
			{name: "environment", env: []string{"DISKIMPORTER_SOURCE_HEADER=X-Token: " + token + "\r\nHost: x"},
				stderr: "diskimporter import: DISKIMPORTER_SOURCE_HEADER: header X-Token: a control character in the value"},
		} {
			r := runImport(t, childEnv(t, append(credsEnv(reg), c.env...)...),
				importArgs(reg, src.URL+uri, reg.Addr+"/"+repo+":v1", c.args...)...)
			if r.code != 2 || len(r.stdout) != 0 || !strings.Contains(string(r.stderr), c.stderr) {
				t.Errorf("%s: exit %d, want 2 and %q:\n%s", c.name, r.code, c.stderr, r)
			}
			if bytes.Contains(r.stderr, []byte(token)) {
				t.Errorf("%s: stderr holds the header value:\n%s", c.name, r.stderr)
			}
		}
		if n := src.gets(uri); n != 0 {
			t.Errorf("the source was requested %d times", n)
		}
	})

	t.Run("sent", func(t *testing.T) {
		t.Parallel()
		disk := testdisk.New(1 << 20)
		var denied atomic.Int32
		protected := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") != "Bearer "+token || r.Header.Get("X-Api-Key") != key {
				denied.Add(1)
				http.Error(w, "no token", http.StatusUnauthorized)
				return
			}
			http.ServeContent(w, r, "disk.img", time.Unix(0, 0), disk.Reader())
		}))
		defer protected.Close()
		headerFile := filepath.Join(t.TempDir(), "headers")
		if err := os.WriteFile(headerFile, []byte("# from a Secret\nX-Api-Key: "+key+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		repo := newRepo(t)
		dest := reg.Addr + "/" + repo + ":v1"
		resultFile := filepath.Join(t.TempDir(), "result.json")
		// SOURCE and DESTINATION as arguments.
		r := runImport(t, childEnv(t, append(credsEnv(reg), "DISKIMPORTER_SOURCE_HEADER=Authorization: Bearer "+token)...),
			protected.URL+"/disk.img", dest, "--ca-file", reg.CAFile, "--log-format", "json",
			"--source-header-file", headerFile, "--result-file", resultFile)
		res := parseSuccess(t, r)
		verify(t, res, want{dest: dest, source: protected.URL + "/disk.img", sha256: sha256Of(disk, 1<<20), size: 1 << 20, format: "raw", diskName: "disk.img"})
		if n := denied.Load(); n != 0 {
			t.Errorf("%d requests without the headers", n)
		}
		b, _ := os.ReadFile(resultFile)
		for _, secret := range []string{token, key} {
			if bytes.Contains(r.stderr, []byte(secret)) || bytes.Contains(r.stdout, []byte(secret)) || bytes.Contains(b, []byte(secret)) {
				t.Errorf("the header value %q was logged or printed:\n%s", secret, r)
			}
		}
	})
}
