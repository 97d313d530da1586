package e2e

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diskimporter/diskimporter/e2e/fault"
	"github.com/diskimporter/diskimporter/importer/testdisk"
	"github.com/diskimporter/diskimporter/layer"
)

// patchCutter forwards layer PATCHes to the registry, cutting each of the
// first len(at) of them when the layer's byte at[i] is reached, and counts
// the body bytes that reach the registry.
type patchCutter struct {
	mu        sync.Mutex
	at        []int64
	forwarded atomic.Int64
	patches   atomic.Int64
}

// handle wraps a PATCH's body; it never answers a request itself.
func (c *patchCutter) handle(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodPatch || r.ContentLength < 1<<20 { // the config blob goes whole
		return false
	}
	c.patches.Add(1)
	from := int64(0)
	if cr := r.Header.Get("Content-Range"); cr != "" {
		start, _, _ := strings.Cut(cr, "-")
		from, _ = strconv.ParseInt(start, 10, 64)
	}
	limit := int64(-1)
	c.mu.Lock()
	if len(c.at) > 0 {
		limit, c.at = c.at[0]-from, c.at[1:]
	}
	c.mu.Unlock()
	r.Body = &fault.Body{RC: r.Body, Left: limit, Count: &c.forwarded}
	return false
}

// countingSource serves a generated disk with Range support and an ETag,
// counting the body bytes it writes.
func countingSource(t *testing.T, size int64) (string, *atomic.Int64) {
	t.Helper()
	disk := testdisk.New(size)
	var served atomic.Int64
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"resume-disk"`)
		http.ServeContent(&killCountingWriter{ResponseWriter: w, n: &served}, r, "disk.img", time.Unix(0, 0), disk.Reader())
	}))
	t.Cleanup(s.Close)
	return s.URL + "/disk.img", &served
}

// layerDigest is the digest of the layer diskimporter makes of the
// generated disk of size bytes.
func layerDigest(t *testing.T, size int64) string {
	t.Helper()
	return layerDigestOf(t, testdisk.New(size).Reader(), size)
}

// TestUploadResumes: the registry connection is cut at 30%, 60% and 90% of
// a 256 MiB layer upload; the import goes on each time where the registry
// stands. The image is the one a clean import makes, the registry is sent
// again only what it had not stored at a cut, and the source is read again at most one checkpoint
// interval plus what was fetched ahead per cut.
func TestUploadResumes(t *testing.T) {
	needE2E(t)
	t.Parallel()
	const size = 256 << 20
	const interval = 8 << 20
	total, err := layer.TarSize(layer.DefaultDiskName, size)
	if err != nil {
		t.Fatal(err)
	}
	cutter := &patchCutter{at: []int64{total * 3 / 10, total * 6 / 10, total * 9 / 10}}
	proxy := newFaultProxy(t, cutter.handle)
	source, served := countingSource(t, size)
	dest := proxy.addr + "/" + newRepo(t) + ":v1"
	args := []string{"--source", source, "--destination", dest, "--ca-file", proxy.caFile, "--log-format", "json",
		"--checkpoint-interval", strconv.Itoa(interval), "--retries", "5"}
	start := time.Now()
	res := parseSuccess(t, runImport(t, childEnv(t, credsEnv(reg)...), args...))
	took := time.Since(start)
	if want := layerDigest(t, size); res.LayerDigest != want {
		t.Errorf("layer %s, want the clean import's %s", res.LayerDigest, want)
	}
	if res.Resumes != 3 || res.ResumedFrom == 0 {
		t.Errorf("resumes %d from %d, want 3 from the last cut", res.Resumes, res.ResumedFrom)
	}
	// What the proxy had passed on but the registry had not stored when
	// the connection broke (socket buffers) is sent again: at most that.
	if got := cutter.forwarded.Load(); got < total || got > total+3*(1<<20) {
		t.Errorf("the registry was sent %d layer bytes for a %d-byte layer: %d twice", got, total, got-total)
	}
	reread := served.Load() - size
	// Per cut: back to the checkpoint, and what the parallel read had
	// fetched ahead (--connections × --chunk-size, 4 × 8 MiB).
	if bound := int64(3 * (interval + 4*8<<20)); reread < 0 || reread > bound {
		t.Errorf("the source served %d bytes again, want at most %d (3 × (interval + connections × chunk))", reread, bound)
	}
	// A clean import of the same disk, for the wall time: logged, never
	// asserted.
	clean := &patchCutter{}
	cleanProxy := newFaultProxy(t, clean.handle)
	start = time.Now()
	parseSuccess(t, runImport(t, childEnv(t, credsEnv(reg)...), "--source", source, "--destination", cleanProxy.addr+"/"+newRepo(t)+":v1",
		"--ca-file", cleanProxy.caFile, "--log-format", "json"))
	t.Logf("%d resumes: %d PATCHes, %d bytes sent to the registry for %d, source served %d bytes again; %v against %v for a clean import",
		res.Resumes, cutter.patches.Load(), cutter.forwarded.Load(), total, reread, took.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}
