package podstatus

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	k8stesting "k8s.io/client-go/testing"

	"github.com/diskimporter/diskimporter/importer"
)

const (
	testNamespace = "vms"
	testPod       = "import-fedora-x7k2p"
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

func newFakeClient() *fake.Clientset {
	return fake.NewClientset(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{
		Name: testPod, Namespace: testNamespace,
		Annotations: map[string]string{"kept": "yes"},
	}})
}

// patches returns the patch actions the fake client received.
func patches(t *testing.T, c *fake.Clientset) []k8stesting.PatchAction {
	t.Helper()
	var out []k8stesting.PatchAction
	for _, a := range c.Actions() {
		if p, ok := a.(k8stesting.PatchAction); ok && a.GetVerb() == "patch" {
			if a.GetResource().Resource != "pods" || a.GetNamespace() != testNamespace || p.GetName() != testPod {
				t.Errorf("patch of %s %s/%s, want pods %s/%s", a.GetResource().Resource, a.GetNamespace(), p.GetName(), testNamespace, testPod)
			}
			if p.GetPatchType() != types.MergePatchType {
				t.Errorf("patch type %q, want %q", p.GetPatchType(), types.MergePatchType)
			}
			out = append(out, p)
		}
	}
	return out
}

func podAnnotations(t *testing.T, c kubernetes.Interface) map[string]string {
	t.Helper()
	pod, err := c.CoreV1().Pods(testNamespace).Get(context.Background(), testPod, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get pod: %v", err)
	}
	return pod.Annotations
}

func pushing(bytes int64) importer.Progress {
	return importer.Progress{Phase: importer.PhasePushing, Bytes: bytes, Total: 1 << 30, BytesPerSecond: 123.45e6}
}

func TestReportRateLimited(t *testing.T) {
	c := newFakeClient()
	clk := newClock()
	r := New(c, testNamespace, testPod, WithInterval(5*time.Second), WithClock(clk.now))

	for i := range 100 {
		r.Report(pushing(int64(i) << 20))
		clk.advance(10 * time.Millisecond) // 100 reports in 1 s < 5 s
	}
	if n := len(patches(t, c)); n != 1 {
		t.Fatalf("%d patches for 100 reports within one interval, want 1", n)
	}
	if got := podAnnotations(t, c)[AnnotationBytes]; got != "0" {
		t.Errorf("bytes annotation %q, want the first report's 0", got)
	}

	clk.advance(4 * time.Second) // 5 s after the first patch
	r.Report(pushing(512 << 20))
	if n := len(patches(t, c)); n != 2 {
		t.Fatalf("%d patches once the interval passed, want 2", n)
	}
	a := podAnnotations(t, c)
	if a[AnnotationBytes] != "536870912" || a[AnnotationPercent] != "50.0" {
		t.Errorf("annotations %v, want bytes 536870912 and percent 50.0", a)
	}
	r.Report(pushing(513 << 20))
	if n := len(patches(t, c)); n != 2 {
		t.Fatalf("%d patches right after the second one, want still 2", n)
	}
}

func TestReportFinalAlwaysSent(t *testing.T) {
	for _, final := range []importer.Phase{importer.PhaseDone, importer.PhaseFailed} {
		t.Run(string(final), func(t *testing.T) {
			c := newFakeClient()
			clk := newClock()
			r := New(c, testNamespace, testPod, WithClock(clk.now))

			r.Report(importer.Progress{Phase: importer.PhaseDownloading})
			clk.advance(time.Millisecond)
			r.Report(pushing(1 << 20)) // dropped: within the interval
			clk.advance(time.Millisecond)
			r.Report(importer.Progress{Phase: final, Bytes: 1 << 30, Total: 1 << 30, BytesPerSecond: 98.76e6})
			if n := len(patches(t, c)); n != 2 {
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
			got := podAnnotations(t, c)
			for k, v := range want {
				if got[k] != v {
					t.Errorf("annotation %s = %q, want %q", k, got[k], v)
				}
			}
			if len(got) != len(want) {
				t.Errorf("annotations %v, want %v", got, want)
			}

			// A late progress report must not overwrite the final phase.
			clk.advance(time.Hour)
			r.Report(pushing(2 << 20))
			if n := len(patches(t, c)); n != 2 {
				t.Errorf("%d patches after a report following the final phase, want still 2", n)
			}
		})
	}
}

func TestReportPatchErrorIgnored(t *testing.T) {
	c := newFakeClient()
	var calls int
	c.PrependReactor("patch", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		calls++
		return true, nil, errors.New("apiserver on fire")
	})
	var logs syncBuffer
	clk := newClock()
	r := New(c, testNamespace, testPod, WithClock(clk.now), WithInterval(5*time.Second),
		WithLogger(slog.New(slog.NewJSONHandler(&logs, nil))))

	r.Report(pushing(1))
	clk.advance(time.Second)
	r.Report(importer.Progress{Phase: importer.PhaseFailed}) // sent, its error not logged
	if calls != 2 {
		t.Fatalf("%d patch attempts, want 2", calls)
	}
	if n := strings.Count(logs.String(), "apiserver on fire"); n != 1 {
		t.Fatalf("patch error logged %d times within one interval, want once; logs:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), `"pod":"`+testPod+`"`) || !strings.Contains(logs.String(), `"level":"WARN"`) {
		t.Errorf("log lacks the pod or is not a warning:\n%s", logs.String())
	}

	clk.advance(5 * time.Second)
	r.Report(importer.Progress{Phase: importer.PhaseDone})
	if n := strings.Count(logs.String(), "apiserver on fire"); n != 2 {
		t.Fatalf("patch error logged %d times over two intervals, want twice; logs:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), `"suppressed_errors":1`) {
		t.Errorf("second log does not count the suppressed error:\n%s", logs.String())
	}
}

func TestReportNoPod(t *testing.T) {
	// The fake tracker answers NotFound: logged, ignored.
	var logs syncBuffer
	r := New(fake.NewClientset(), testNamespace, testPod, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	r.Report(importer.Progress{Phase: importer.PhaseDone})
	if !strings.Contains(logs.String(), "not found") {
		t.Errorf("NotFound not logged:\n%s", logs.String())
	}
}

func TestNilReporter(t *testing.T) {
	var r *Reporter
	r.Report(pushing(1))
	r.Report(importer.Progress{Phase: importer.PhaseDone})
}

func TestReportConcurrent(t *testing.T) {
	c := newFakeClient()
	r := New(c, testNamespace, testPod, WithInterval(time.Hour))
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
	if n := len(patches(t, c)); n != 2 {
		t.Fatalf("%d patches, want 2", n)
	}
	if got := podAnnotations(t, c)[AnnotationPhase]; got != "done" {
		t.Errorf("phase %q, want done", got)
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

// TestReportRealClient runs the real REST client against a server that
// answers like the API server's pod PATCH endpoint.
func TestReportRealClient(t *testing.T) {
	var mu sync.Mutex
	var bodies []map[string]any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		const path = "/api/v1/namespaces/" + testNamespace + "/pods/" + testPod
		if req.Method != http.MethodPatch || req.URL.Path != path {
			t.Errorf("request %s %s, want PATCH %s", req.Method, req.URL.Path, path)
			http.Error(w, "unexpected", http.StatusNotFound)
			return
		}
		if ct, _, _ := mime.ParseMediaType(req.Header.Get("Content-Type")); ct != string(types.MergePatchType) {
			t.Errorf("Content-Type %q, want %s", req.Header.Get("Content-Type"), types.MergePatchType)
		}
		raw, _ := io.ReadAll(req.Body)
		var body map[string]any
		if err := json.Unmarshal(raw, &body); err != nil {
			t.Errorf("body %q: %v", raw, err)
		}
		mu.Lock()
		bodies = append(bodies, body)
		mu.Unlock()

		var patch struct {
			Metadata struct {
				Annotations map[string]string `json:"annotations"`
			} `json:"metadata"`
		}
		_ = json.Unmarshal(raw, &patch)
		pod := corev1.Pod{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
			ObjectMeta: metav1.ObjectMeta{Name: testPod, Namespace: testNamespace, Annotations: patch.Metadata.Annotations},
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(pod)
	}))
	defer srv.Close()

	client, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	clk := newClock()
	r := New(client, testNamespace, testPod, WithClock(clk.now), WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	r.Report(importer.Progress{Phase: importer.PhasePushing, Bytes: 256 << 20, Total: 1 << 30, BytesPerSecond: 250e6})
	clk.advance(4 * time.Second)
	r.Report(importer.Progress{Phase: importer.PhaseDone, Bytes: 1 << 30, Total: 1 << 30, BytesPerSecond: 249.96e6})

	if logs.String() != "" {
		t.Errorf("errors logged:\n%s", logs.String())
	}
	mu.Lock()
	defer mu.Unlock()
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
	if len(bodies) != len(want) {
		t.Fatalf("%d PATCH requests, want %d: %v", len(bodies), len(want), bodies)
	}
	for i := range want {
		got, _ := json.Marshal(bodies[i])
		exp, _ := json.Marshal(want[i])
		if !bytes.Equal(got, exp) {
			t.Errorf("PATCH %d body\n got %s\nwant %s", i, got, exp)
		}
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

	client, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	r := New(client, testNamespace, testPod, WithTimeout(200*time.Millisecond),
		WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	start := time.Now()
	r.Report(importer.Progress{Phase: importer.PhaseFailed})
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Report blocked %v with a 200ms patch timeout", d)
	}
	if !strings.Contains(logs.String(), "could not annotate") {
		t.Errorf("timeout not logged:\n%s", logs.String())
	}
}
