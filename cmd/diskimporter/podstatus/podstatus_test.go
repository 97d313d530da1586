package podstatus

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"mime"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/diskimporter/diskimporter/importer"
)

const (
	testNamespace = "vms"
	testPod       = "import-fedora-x7k2p"
	podPath       = "/api/v1/namespaces/" + testNamespace + "/pods/" + testPod
	mergePatch    = "application/merge-patch+json"
)

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// syncBuffer is a bytes.Buffer safe for a logger used from several
// goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// records returns the JSON log records written to s.
func (s *syncBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.Lines(s.String()) {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, rec)
	}
	return out
}

func jsonLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewJSONHandler(w, nil)) }

// patchRequest is a request received by an apiServer.
type patchRequest struct {
	method, path, contentType, userAgent string
	body                                 []byte
}

// apiFailure is how an apiServer answers every request while set.
type apiFailure struct {
	code        int
	contentType string // of body
	body        string
}

// statusFailure returns the failure the API server sends for an error:
// a metav1.Status in JSON.
func statusFailure(code int, reason, message string) *apiFailure {
	b, _ := json.Marshal(map[string]any{
		"kind": "Status", "apiVersion": "v1", "metadata": map[string]any{},
		"status": "Failure", "message": message, "reason": reason, "code": code,
		"details": map[string]any{"name": testPod, "kind": "pods"},
	})
	return &apiFailure{code: code, contentType: "application/json", body: string(b)}
}

// apiServer plays, on loopback, the API server's PATCH endpoint of one Pod
// (testPod in testNamespace), applying JSON merge patches to its
// annotations. It records every request it receives.
type apiServer struct {
	t   *testing.T
	url string

	mu          sync.Mutex
	annotations map[string]string // the Pod's
	requests    []patchRequest
	fail        *apiFailure // when not nil, every request fails so
	warning     string      // Warning header of every response when not empty
}

// newAPIServer starts an apiServer whose Pod has the annotation kept=yes.
// It is closed at the end of the test.
func newAPIServer(t *testing.T) *apiServer {
	s := &apiServer{t: t, annotations: map[string]string{"kept": "yes"}}
	srv := httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(srv.Close)
	s.url = srv.URL
	return s
}

func (s *apiServer) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		s.t.Errorf("reading the request body: %v", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = append(s.requests, patchRequest{
		method: req.Method, path: req.URL.Path, contentType: req.Header.Get("Content-Type"),
		userAgent: req.Header.Get("User-Agent"), body: body,
	})
	if s.warning != "" {
		w.Header().Set("Warning", `299 - "`+s.warning+`"`)
	}
	if f := s.fail; f != nil {
		w.Header().Set("Content-Type", f.contentType)
		w.WriteHeader(f.code)
		_, _ = io.WriteString(w, f.body)
		return
	}
	if req.Method != http.MethodPatch || req.URL.Path != podPath {
		s.t.Errorf("request %s %s, want PATCH %s", req.Method, req.URL.Path, podPath)
		http.Error(w, "unexpected request", http.StatusNotFound)
		return
	}
	if ct, _, _ := mime.ParseMediaType(req.Header.Get("Content-Type")); ct != mergePatch {
		s.t.Errorf("Content-Type %q, want %s", req.Header.Get("Content-Type"), mergePatch)
		http.Error(w, "unsupported patch type", http.StatusUnsupportedMediaType)
		return
	}
	var patch struct {
		Metadata struct {
			Annotations map[string]*string `json:"annotations"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(body, &patch); err != nil {
		s.t.Errorf("patch body %q: %v", body, err)
		http.Error(w, "bad patch", http.StatusBadRequest)
		return
	}
	for k, v := range patch.Metadata.Annotations {
		if v == nil {
			delete(s.annotations, k)
		} else {
			s.annotations[k] = *v
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": testPod, "namespace": testNamespace, "annotations": s.annotations},
	})
}

// setFailure makes every later request fail with f, or succeed when f is
// nil.
func (s *apiServer) setFailure(f *apiFailure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = f
}

// received returns the requests received so far.
func (s *apiServer) received() []patchRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]patchRequest(nil), s.requests...)
}

// podAnnotations returns the Pod's annotations.
func (s *apiServer) podAnnotations() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.annotations)
}

// reporter returns a Reporter patching the server's Pod.
func (s *apiServer) reporter(opts ...Option) *Reporter {
	s.t.Helper()
	r, err := New(&rest.Config{Host: s.url}, testNamespace, testPod, opts...)
	if err != nil {
		s.t.Fatalf("New: %v", err)
	}
	return r
}

func pushing(bytes int64) importer.Progress {
	return importer.Progress{Phase: importer.PhasePushing, Bytes: bytes, Total: 1 << 30, BytesPerSecond: 123.45e6}
}

func TestReportRateLimited(t *testing.T) {
	s := newAPIServer(t)
	clk := newClock()
	r := s.reporter(WithInterval(5*time.Second), WithClock(clk.now))

	for i := range 100 {
		r.Report(pushing(int64(i) << 20))
		clk.advance(10 * time.Millisecond) // 100 reports in 1 s < 5 s
	}
	if n := len(s.received()); n != 1 {
		t.Fatalf("%d patches for 100 reports within one interval, want 1", n)
	}
	if got := s.podAnnotations()[AnnotationBytes]; got != "0" {
		t.Errorf("bytes annotation %q, want the first report's 0", got)
	}

	clk.advance(4 * time.Second) // 5 s after the first patch
	r.Report(pushing(512 << 20))
	if n := len(s.received()); n != 2 {
		t.Fatalf("%d patches once the interval passed, want 2", n)
	}
	a := s.podAnnotations()
	if a[AnnotationBytes] != "536870912" || a[AnnotationPercent] != "50.0" {
		t.Errorf("annotations %v, want bytes 536870912 and percent 50.0", a)
	}
	r.Report(pushing(513 << 20))
	if n := len(s.received()); n != 2 {
		t.Fatalf("%d patches right after the second one, want still 2", n)
	}
}

func TestReportFinalAlwaysSent(t *testing.T) {
	for _, final := range []importer.Phase{importer.PhaseDone, importer.PhaseFailed} {
		t.Run(string(final), func(t *testing.T) {
			s := newAPIServer(t)
			clk := newClock()
			r := s.reporter(WithClock(clk.now))

			r.Report(importer.Progress{Phase: importer.PhaseDownloading})
			clk.advance(time.Millisecond)
			r.Report(pushing(1 << 20)) // dropped: within the interval
			clk.advance(time.Millisecond)
			r.Report(importer.Progress{Phase: final, Bytes: 1 << 30, Total: 1 << 30, BytesPerSecond: 98.76e6})
			if n := len(s.received()); n != 2 {
				t.Fatalf("%d patches, want 2: the first report and the final one", n)
			}
			want := map[string]string{
				"kept":                "yes", // a merge patch leaves other annotations alone
				AnnotationPhase:       string(final),
				AnnotationBytes:       "1073741824",
				AnnotationTotal:       "1073741824",
				AnnotationPercent:     "100.0",
				AnnotationMBPerSecond: "98.8",
				AnnotationUpdated:     "2026-11-22T10:00:00Z",
			}
			if got := s.podAnnotations(); !maps.Equal(got, want) {
				t.Errorf("annotations %v, want %v", got, want)
			}

			// A late progress report must not overwrite the final phase.
			clk.advance(time.Hour)
			r.Report(pushing(2 << 20))
			if n := len(s.received()); n != 2 {
				t.Errorf("%d patches after a report following the final phase, want still 2", n)
			}
		})
	}
}

// TestReportPatchError checks that a failing patch is only logged, at most
// once per interval, and that reporting goes on.
func TestReportPatchError(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fail    *apiFailure
		wantErr string // in the logged error
	}{
		{
			name:    "no pod",
			fail:    statusFailure(http.StatusNotFound, "NotFound", `pods "`+testPod+`" not found`),
			wantErr: `pods "` + testPod + `" not found`,
		},
		{
			name: "forbidden",
			fail: statusFailure(http.StatusForbidden, "Forbidden",
				`pods "`+testPod+`" is forbidden: User "system:serviceaccount:vms:default" cannot patch resource "pods" in API group "" in the namespace "vms"`),
			wantErr: `cannot patch resource "pods"`,
		},
		{
			name:    "internal error",
			fail:    statusFailure(http.StatusInternalServerError, "InternalError", "apiserver on fire"),
			wantErr: "apiserver on fire",
		},
		{
			name:    "proxy error, not a Status",
			fail:    &apiFailure{code: http.StatusBadGateway, contentType: "text/plain", body: "upstream connect error"},
			wantErr: "upstream connect error",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newAPIServer(t)
			s.setFailure(tc.fail)
			var logs syncBuffer
			clk := newClock()
			r := s.reporter(WithClock(clk.now), WithInterval(5*time.Second), WithLogger(jsonLogger(&logs)))

			// errorLogs checks the n logged errors and returns the last.
			errorLogs := func(n int) map[string]any {
				t.Helper()
				recs := logs.records(t)
				if len(recs) != n {
					t.Fatalf("%d log records, want %d:\n%s", len(recs), n, logs.String())
				}
				for _, rec := range recs {
					if rec["level"] != "WARN" || rec["pod"] != testPod || rec["namespace"] != testNamespace ||
						!strings.Contains(rec["msg"].(string), "could not annotate") {
						t.Errorf("log record %v: want a WARN about pod %s/%s", rec, testNamespace, testPod)
					}
					if e, _ := rec["error"].(string); !strings.Contains(e, tc.wantErr) {
						t.Errorf("logged error %q, want it to contain %q", e, tc.wantErr)
					}
				}
				return recs[n-1]
			}

			r.Report(pushing(1))
			if rec := errorLogs(1); rec["phase"] != "pushing" || rec["suppressed_errors"] != nil {
				t.Errorf("first log %v, want phase pushing and no suppressed_errors", rec)
			}
			clk.advance(time.Second)
			r.Report(importer.Progress{Phase: importer.PhaseFailed}) // sent, its error not logged
			if n := len(s.received()); n != 2 {
				t.Fatalf("%d patch attempts, want 2", n)
			}
			errorLogs(1)

			clk.advance(5 * time.Second)
			r.Report(importer.Progress{Phase: importer.PhaseDone})
			if n := len(s.received()); n != 3 {
				t.Fatalf("%d patch attempts, want 3", n)
			}
			if rec := errorLogs(2); rec["phase"] != "done" || rec["suppressed_errors"] != 1.0 {
				t.Errorf("second log %v, want phase done and suppressed_errors 1", rec)
			}

			// The API server recovers: the next report gets through.
			s.setFailure(nil)
			clk.advance(time.Second)
			r.Report(importer.Progress{Phase: importer.PhaseDone, Bytes: 7, Total: 7})
			if got := s.podAnnotations(); got[AnnotationPhase] != "done" || got[AnnotationBytes] != "7" || got["kept"] != "yes" {
				t.Errorf("annotations %v after the API server recovered, want phase done, bytes 7, kept yes", got)
			}
			errorLogs(2)
		})
	}
}

func TestNilReporter(t *testing.T) {
	var r *Reporter
	r.Report(pushing(1))
	r.Report(importer.Progress{Phase: importer.PhaseDone})
}

func TestReportConcurrent(t *testing.T) {
	s := newAPIServer(t)
	r := s.reporter(WithInterval(time.Hour))
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 50 {
				r.Report(pushing(int64(i*50 + j)))
			}
		})
	}
	wg.Wait()
	r.Report(importer.Progress{Phase: importer.PhaseDone})
	if n := len(s.received()); n != 2 {
		t.Fatalf("%d patches, want 2", n)
	}
	if got := s.podAnnotations()[AnnotationPhase]; got != "done" {
		t.Errorf("phase %q, want done", got)
	}
}

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  *rest.Config
	}{
		{name: "no config"},
		{name: "missing CA file", cfg: &rest.Config{Host: "https://127.0.0.1:1",
			TLSClientConfig: rest.TLSClientConfig{CAFile: "/nonexistent/ca.crt"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := New(tc.cfg, testNamespace, testPod)
			if err == nil || r != nil {
				t.Fatalf("New = %v, %v; want an error", r, err)
			}
			if !strings.Contains(err.Error(), testNamespace+"/"+testPod) {
				t.Errorf("error %q does not name the pod", err)
			}
		})
	}

	// The caller's configuration is left alone.
	cfg := &rest.Config{Host: "http://127.0.0.1:1"}
	if _, err := New(cfg, testNamespace, testPod); err != nil {
		t.Fatalf("New: %v", err)
	}
	if cfg.UserAgent != "" || cfg.Timeout != 0 || cfg.GroupVersion != nil || cfg.NegotiatedSerializer != nil || cfg.WarningHandler != nil {
		t.Errorf("New modified its rest.Config: %+v", cfg)
	}
}

func TestFromEnv(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	for _, tc := range []struct {
		name, pod, namespace string
		wantErr              bool
	}{
		{name: "outside a cluster"},
		{name: "only the name", pod: testPod, wantErr: true},
		{name: "only the namespace", namespace: testNamespace, wantErr: true},
		{name: "no in-cluster config", pod: testPod, namespace: testNamespace, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(EnvPodName, tc.pod)
			t.Setenv(EnvPodNamespace, tc.namespace)
			r, err := FromEnv(t.Context())
			if (err != nil) != tc.wantErr {
				t.Fatalf("FromEnv: %v, want error %v", err, tc.wantErr)
			}
			if r != nil {
				t.Fatalf("FromEnv returned a Reporter %+v", r)
			}
			r.Report(importer.Progress{Phase: importer.PhaseDone}) // no-op
		})
	}
}

// TestReportPatchRequest checks the requests themselves: a JSON merge patch
// of the Pod's annotations, with the importer's User-Agent.
func TestReportPatchRequest(t *testing.T) {
	s := newAPIServer(t)
	var logs syncBuffer
	clk := newClock()
	r := s.reporter(WithClock(clk.now), WithLogger(jsonLogger(&logs)))
	r.Report(importer.Progress{Phase: importer.PhasePushing, Bytes: 256 << 20, Total: 1 << 30, BytesPerSecond: 250e6})
	clk.advance(4 * time.Second)
	r.Report(importer.Progress{Phase: importer.PhaseDone, Bytes: 1 << 30, Total: 1 << 30, BytesPerSecond: 249.96e6})

	if logs.String() != "" {
		t.Errorf("errors logged:\n%s", logs.String())
	}
	want := []map[string]any{
		{"metadata": map[string]any{"annotations": map[string]any{
			AnnotationPhase: "pushing", AnnotationBytes: "268435456", AnnotationTotal: "1073741824",
			AnnotationPercent: "25.0", AnnotationMBPerSecond: "250.0", AnnotationUpdated: "2026-11-22T10:00:00Z",
		}}},
		{"metadata": map[string]any{"annotations": map[string]any{
			AnnotationPhase: "done", AnnotationBytes: "1073741824", AnnotationTotal: "1073741824",
			AnnotationPercent: "100.0", AnnotationMBPerSecond: "250.0", AnnotationUpdated: "2026-11-22T10:00:04Z",
		}}},
	}
	reqs := s.received()
	if len(reqs) != len(want) {
		t.Fatalf("%d PATCH requests, want %d: %v", len(reqs), len(want), reqs)
	}
	for i, req := range reqs {
		if req.method != http.MethodPatch || req.path != podPath {
			t.Errorf("request %d: %s %s, want PATCH %s", i, req.method, req.path, podPath)
		}
		if req.contentType != mergePatch {
			t.Errorf("request %d: Content-Type %q, want %s", i, req.contentType, mergePatch)
		}
		if !strings.HasPrefix(req.userAgent, UserAgent) {
			t.Errorf("request %d: User-Agent %q, want %s", i, req.userAgent, UserAgent)
		}
		var body map[string]any
		if err := json.Unmarshal(req.body, &body); err != nil {
			t.Fatalf("request %d: body %q: %v", i, req.body, err)
		}
		got, _ := json.Marshal(body) // keys sorted
		exp, _ := json.Marshal(want[i])
		if !bytes.Equal(got, exp) {
			t.Errorf("PATCH %d body\n got %s\nwant %s", i, got, exp)
		}
	}
}

// TestReportAPIServerWarning checks that the API server's warnings go to
// the Reporter's logger.
func TestReportAPIServerWarning(t *testing.T) {
	s := newAPIServer(t)
	s.warning = "diskimporter.io/phase: annotations are deprecated, use a status"
	var logs syncBuffer
	r := s.reporter(WithLogger(jsonLogger(&logs)))
	r.Report(importer.Progress{Phase: importer.PhaseDone})

	recs := logs.records(t)
	if len(recs) != 1 || recs[0]["level"] != "WARN" || recs[0]["warning"] != s.warning {
		t.Errorf("logs %v, want one WARN with warning %q", recs, s.warning)
	}
	if got := s.podAnnotations()[AnnotationPhase]; got != "done" {
		t.Errorf("phase %q, want done", got)
	}
}

// TestReportSlowAPIServer checks that a hanging API server holds Report up
// for the patch timeout only.
func TestReportSlowAPIServer(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		select {
		case <-release:
		case <-req.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)

	var logs syncBuffer
	r, err := New(&rest.Config{Host: srv.URL}, testNamespace, testPod, WithTimeout(200*time.Millisecond),
		WithLogger(jsonLogger(&logs)))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r.Report(importer.Progress{Phase: importer.PhaseFailed})
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Report blocked %v with a 200ms patch timeout", d)
	}
	recs := logs.records(t)
	if len(recs) != 1 || !strings.Contains(recs[0]["msg"].(string), "could not annotate") || recs[0]["error"] == nil {
		t.Errorf("timeout not logged:\n%s", logs.String())
	}
}
