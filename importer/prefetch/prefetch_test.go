package prefetch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/diskimporter/diskimporter/importer/reason"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// quiet drops the handler's log lines.
var quiet = slog.New(slog.DiscardHandler)

const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// post sends body to h and decodes the answer, which must be JSON.
func post(t *testing.T, h http.Handler, method, body string) (int, Response) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, Path, strings.NewReader(body)))
	var resp Response
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
		t.Fatalf("answer %q is not JSON: %v", rec.Body.String(), err)
	}
	return rec.Code, resp
}

func newHandler(t *testing.T, warm WarmFunc, m *Metrics) *Handler {
	t.Helper()
	h, err := NewHandler(t.Context(), Config{Allow: []string{"registry.example:5000", "127.0.0.1:5000"}, Warm: warm, Metrics: m, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestRequests: every request gets a JSON answer with a status code that
// says what was wrong, and the warm is asked only for a well-formed image
// of an allowed registry.
func TestRequests(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, method, body string
		warmErr            error
		code               int
		status, message    string
		warmed             bool
	}{
		{"tag", "POST", `{"image":"registry.example:5000/disks/fedora:41","trace_id":"t1"}`, nil, 200, StatusSuccess, "1 blobs fetched", true},
		{"docker:// and digest", "POST", `{"image":"docker://127.0.0.1:5000/disks/fedora@` + digest + `"}`, nil, 200, StatusSuccess, "", true},
		{"GET", "GET", ``, nil, 405, StatusFailure, "only POST", false},
		{"malformed JSON", "POST", `{"image":`, nil, 400, StatusFailure, "not a prefetch request", false},
		{"unknown field", "POST", `{"image":"registry.example:5000/a:b","imgae":"x"}`, nil, 400, StatusFailure, "unknown field", false},
		{"two objects", "POST", `{"image":"registry.example:5000/a:b"}{}`, nil, 400, StatusFailure, "more than one", false},
		{"huge body", "POST", `{"image":"` + strings.Repeat("a", 1<<20) + `"}`, nil, 413, StatusFailure, "over", false},
		{"no image", "POST", `{"trace_id":"x"}`, nil, 400, StatusFailure, `no "image"`, false},
		{"short digest", "POST", `{"image":"registry.example:5000/a@sha256:0123"}`, nil, 400, StatusFailure, "64 hex digits", false},
		{"bad characters", "POST", `{"image":"registry.example:5000/A B:c"}`, nil, 400, StatusFailure, "give REGISTRY/REPO:TAG", false},
		{"another registry", "POST", `{"image":"evil.example/disks/x:1"}`, nil, 403, StatusFailure, "evil.example is not allowed", false},
		{"no registry named", "POST", `{"image":"fedora:41"}`, nil, 400, StatusFailure, "give REGISTRY/REPO:TAG", false},
		{"unknown image", "POST", `{"image":"registry.example:5000/a:b"}`, fmt.Errorf("%w: manifest unknown", reason.ErrSourceNotFound), 404, StatusFailure, "manifest unknown", true},
		{"registry failure", "POST", `{"image":"registry.example:5000/a:b"}`, fmt.Errorf("%w: 500", reason.ErrRegistry), 502, StatusFailure, "500", true},
		{"node failure", "POST", `{"image":"registry.example:5000/a:b"}`, errors.New("containerd: no socket"), 500, StatusFailure, "containerd", true},
		{"secret in an error", "POST", `{"image":"registry.example:5000/a:b"}`,
			fmt.Errorf("%w: GET https://store.example/b?X-Amz-Signature=s3cr3t: 403", reason.ErrSourceUnauthorized), 502, StatusFailure, "store.example", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var warmed atomic.Bool
			h := newHandler(t, func(ctx context.Context, ref name.Reference) (Outcome, error) {
				warmed.Store(true)
				return Outcome{Fetched: 1, Bytes: 10}, c.warmErr
			}, nil)
			code, resp := post(t, h, c.method, c.body)
			if code != c.code || resp.Status != c.status || !strings.Contains(resp.Message, c.message) || warmed.Load() != c.warmed {
				t.Errorf("%d %+v (warmed %v); want %d %s with %q (warmed %v)", code, resp, warmed.Load(), c.code, c.status, c.message, c.warmed)
			}
			if strings.Contains(resp.Message, "s3cr3t") {
				t.Errorf("the answer holds the presigned signature: %q", resp.Message)
			}
			if resp.Prefetched != (code == 200) {
				t.Errorf("prefetched %v with %d", resp.Prefetched, code)
			}
		})
	}
}

// TestAsync: an asynchronous request is answered 202 at once and warmed
// after; beyond the queue, 503.
func TestAsync(t *testing.T) {
	t.Parallel()
	release, started := make(chan struct{}), make(chan struct{}, 16)
	h, err := NewHandler(t.Context(), Config{Allow: []string{"registry.example"}, Concurrency: 1, Logger: quiet,
		Warm: func(ctx context.Context, ref name.Reference) (Outcome, error) {
			started <- struct{}{}
			select {
			case <-release:
				return Outcome{}, nil
			case <-ctx.Done():
				return Outcome{}, ctx.Err()
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	body := `{"image":"registry.example/disks/x:1","trace_id":"a","async":true}`
	for i := range 2 {
		if code, resp := post(t, h, "POST", body); code != 202 || resp.Status != StatusAccepted || resp.TraceID != "a" {
			t.Fatalf("request %d: %d %+v, want 202 accepted", i, code, resp)
		}
	}
	<-started
	if code, resp := post(t, h, "POST", body); code != 503 || resp.Status != StatusFailure {
		t.Errorf("beyond the queue: %d %+v, want 503", code, resp)
	}
	close(release)
	<-started // the second ran after the first, one at a time
}

// TestConcurrencyBound: synchronous warms beyond Concurrency wait for a
// slot; never more than Concurrency run at once.
func TestConcurrencyBound(t *testing.T) {
	t.Parallel()
	var running, most atomic.Int32
	gate := make(chan struct{})
	h, err := NewHandler(t.Context(), Config{Allow: []string{"registry.example"}, Concurrency: 2, Logger: quiet,
		Warm: func(ctx context.Context, ref name.Reference) (Outcome, error) {
			n := running.Add(1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			<-gate
			running.Add(-1)
			return Outcome{}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan int, 5)
	for i := range 5 {
		go func() {
			code, _ := post(t, h, "POST", fmt.Sprintf(`{"image":"registry.example/disks/x:%d"}`, i))
			done <- code
		}()
	}
	close(gate)
	for range 5 {
		if code := <-done; code != 200 {
			t.Errorf("code %d", code)
		}
	}
	if most.Load() > 2 {
		t.Errorf("%d warms ran at once, want at most 2", most.Load())
	}
}

// TestSameImageInOrder: requests for one image run in the order they
// arrived: a request after an asynchronous one starts once that one is
// done, and finds what it fetched.
func TestSameImageInOrder(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var running, overlapped atomic.Int32
	var calls atomic.Int32
	h, err := NewHandler(t.Context(), Config{Allow: []string{"registry.example"}, Concurrency: 4, Logger: quiet,
		Warm: func(ctx context.Context, ref name.Reference) (Outcome, error) {
			if running.Add(1) > 1 {
				overlapped.Add(1)
			}
			defer running.Add(-1)
			if calls.Add(1) == 1 {
				<-release // the asynchronous one fetches
				return Outcome{Fetched: 3}, nil
			}
			return Outcome{Skipped: 3}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	body := `{"image":"registry.example/disks/x:1"`
	if code, _ := post(t, h, "POST", body+`,"async":true}`); code != 202 {
		t.Fatalf("async: %d", code)
	}
	h.mu.Lock()
	first := h.last["registry.example/disks/x:1"]
	h.mu.Unlock()
	sync := make(chan Response, 1)
	go func() { _, resp := post(t, h, "POST", body+"}"); sync <- resp }()
	// Let the asynchronous one finish once the second request is in line
	// behind it (or, were it not, once it is answered).
	var resp Response
	for queued := false; !queued; {
		select {
		case resp = <-sync:
			queued = true
		default:
			h.mu.Lock()
			queued = h.last["registry.example/disks/x:1"] != first
			h.mu.Unlock()
			runtime.Gosched()
		}
	}
	close(release)
	if resp.Status == "" {
		resp = <-sync
	}
	if !strings.Contains(resp.Message, "0 blobs fetched") || overlapped.Load() != 0 {
		t.Errorf("the request after the asynchronous one: %+v (overlapped %d); want it after, finding everything", resp, overlapped.Load())
	}
}

// TestMetrics: requests, blobs and bytes are counted.
func TestMetrics(t *testing.T) {
	t.Parallel()
	m := NewMetrics(prometheus.NewRegistry())
	h := newHandler(t, func(ctx context.Context, ref name.Reference) (Outcome, error) {
		return Outcome{Fetched: 2, Skipped: 1, Bytes: 1 << 20}, nil
	}, m)
	post(t, h, "POST", `{"image":"registry.example:5000/a:b"}`)
	post(t, h, "POST", `{"image":"other.example/a:b"}`)
	for _, c := range []struct {
		got  float64
		want float64
	}{
		{value(t, m.requests.WithLabelValues(StatusSuccess, "200")), 1},
		{value(t, m.requests.WithLabelValues(StatusFailure, "403")), 1},
		{value(t, m.blobs.WithLabelValues("fetched")), 2},
		{value(t, m.blobs.WithLabelValues("skipped")), 1},
		{value(t, m.bytes), 1 << 20},
	} {
		if c.got != c.want {
			t.Errorf("got %v, want %v", c.got, c.want)
		}
	}
}

// TestConfig: the allow list is required and holds registries only.
func TestConfig(t *testing.T) {
	t.Parallel()
	warm := func(context.Context, name.Reference) (Outcome, error) { return Outcome{}, nil }
	for _, allow := range [][]string{nil, {"registry.example/disks"}, {"https://registry.example"}, {"a b"}} {
		if _, err := NewHandler(t.Context(), Config{Allow: allow, Warm: warm}); !errors.Is(err, reason.ErrInvalidOptions) {
			t.Errorf("allow %q: %v, want ErrInvalidOptions", allow, err)
		}
	}
}

// FuzzRequest: any body gets a JSON answer, and the warm is only asked
// for an allowed registry's image.
func FuzzRequest(f *testing.F) {
	for _, s := range []string{`{"image":"registry.example:5000/a:b"}`, `{"image":"x@sha256:00"}`, `{`, `[]`, `{"async":true}`, "\x00"} {
		f.Add(s)
	}
	h, err := NewHandler(context.Background(), Config{Allow: []string{"registry.example:5000"}, Logger: quiet,
		Warm: func(ctx context.Context, ref name.Reference) (Outcome, error) {
			if ref.Context().RegistryStr() != "registry.example:5000" {
				panic("warm asked for " + ref.String())
			}
			return Outcome{}, nil
		}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body string) {
		code, resp := post(t, h, "POST", body)
		if code >= 500 && code != 503 {
			t.Errorf("%d %+v for %q", code, resp, body)
		}
	})
}

// value is the value of a counter.
func value(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
