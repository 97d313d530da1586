package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diskimporter/diskimporter/importer/testdisk"
	"github.com/diskimporter/diskimporter/layer"
	"github.com/klauspost/compress/zstd"
)

// holdAt forwards layer PATCHes to the registry, counting their body
// bytes; while armed, it stops a body at layer byte at, tells reached, and
// holds it until the client goes away.
type holdAt struct {
	at        int64
	armed     atomic.Bool
	reached   chan struct{}
	forwarded atomic.Int64
}

func (h *holdAt) handle(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodPatch || r.ContentLength < 1<<20 {
		return false
	}
	limit := int64(-1)
	if h.armed.Load() {
		limit = h.at // the first run's PATCH starts at 0
	}
	r.Body = &heldBody{rc: r.Body, left: limit, h: h}
	return false
}

// heldBody gives left bytes (all when left < 0), then forwards nothing
// more: it reads and drops the client's bytes until the client goes away
// (a server notices that only through the body while it is unread).
type heldBody struct {
	rc   io.ReadCloser
	left int64
	h    *holdAt
}

func (b *heldBody) Read(p []byte) (int, error) {
	if b.left == 0 {
		select {
		case b.h.reached <- struct{}{}:
		default:
		}
		for {
			if _, err := b.rc.Read(p); err != nil {
				return 0, errCut
			}
		}
	}
	if b.left > 0 && int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	if b.left > 0 {
		b.left -= int64(n)
	}
	b.h.forwarded.Add(int64(n))
	return n, err
}

func (b *heldBody) Close() error { return b.rc.Close() }

// TestKilledResumes: an import SIGKILLed once the registry holds 70% of
// the layer, run again with the same --checkpoint, goes on where the
// registry stands: the rerun sends the registry the rest only and makes the
// image a clean import makes; the tag is absent until then. A raw source
// is read again from the last checkpoint on (a Range request); a zstd one
// is decoded again from its start and skipped forward.
func TestKilledResumes(t *testing.T) {
	needE2E(t)
	t.Parallel()
	const size = 128 << 20
	want := layerDigest(t, size)
	for _, compressed := range []bool{false, true} {
		t.Run(map[bool]string{false: "raw", true: "zstd"}[compressed], func(t *testing.T) {
			t.Parallel()
			source, served := countingSource(t, size)
			if compressed {
				source, served = zstdSource(t, size)
			}
			killAndResume(t, source, served, size, want, !compressed, false)
		})
	}
	// The registry forgot the upload between the runs: a fresh upload.
	t.Run("forgotten upload", func(t *testing.T) {
		t.Parallel()
		source, served := countingSource(t, size)
		killAndResume(t, source, served, size, want, true, true)
	})
}

// killAndResume imports source (size bytes of disk, served counting the
// bytes in served), killed at 70% of the layer upload, then again.
func killAndResume(t *testing.T, source string, served *atomic.Int64, size int64, want string, ranged, forget bool) {
	t.Helper()
	const interval = 8 << 20
	total, err := layer.TarSize(layer.DefaultDiskName, size)
	if err != nil {
		t.Fatal(err)
	}
	hold := &holdAt{at: total * 7 / 10, reached: make(chan struct{}, 1)}
	hold.armed.Store(true)
	proxy := newFaultProxy(t, hold.handle)
	repo := newRepo(t)
	checkpoint := filepath.Join(t.TempDir(), "upload.checkpoint")
	args := []string{"--source", source, "--destination", proxy.addr + "/" + repo + ":v1", "--ca-file", proxy.caFile,
		"--log-format", "json", "--checkpoint", checkpoint, "--checkpoint-interval", strconv.Itoa(interval)}
	env := childEnv(t, credsEnv(reg)...)
	killAt(t, hold, env, args)
	checkNoTag(t, reg, repo, "v1")
	if _, err := os.Stat(checkpoint); err != nil {
		t.Fatalf("no checkpoint file after the kill: %v", err)
	}
	sentBefore, servedBefore := hold.forwarded.Load(), served.Load()
	if forget {
		forgetUpload(t, checkpoint, proxy.addr)
	}

	r := runImport(t, env, args...)
	res := parseSuccess(t, r)
	if forget {
		if res.Resumes != 0 || !strings.Contains(string(r.stderr), "starting a fresh one") {
			t.Errorf("resumes %d; want a fresh upload said in the log:\n%s", res.Resumes, r.stderr)
		}
		if res.LayerDigest != want {
			t.Errorf("layer %s, want %s", res.LayerDigest, want)
		}
		return
	}
	if res.LayerDigest != want {
		t.Errorf("layer %s, want the clean import's %s", res.LayerDigest, want)
	}
	if res.Resumes != 1 || res.ResumedFrom < total*6/10 {
		t.Errorf("resumes %d from %d, want 1 from about %d", res.Resumes, res.ResumedFrom, total*7/10)
	}
	resent := hold.forwarded.Load() - total // both runs
	if resent < 0 || resent > 1<<20 {
		t.Errorf("the registry was sent %d layer bytes again, want at most what was in flight at the kill", resent)
	}
	reread := served.Load() - servedBefore
	if bound := size - res.ResumedFrom + interval + 4*8<<20; ranged && reread > bound {
		t.Errorf("the rerun read %d source bytes, want at most %d (the rest, an interval and the read-ahead)", reread, bound)
	}
	if _, err := os.Stat(checkpoint); !os.IsNotExist(err) {
		t.Errorf("the checkpoint file is still there after the upload was committed: %v", err)
	}
	t.Logf("killed at %d of %d layer bytes; the rerun went on from %d, sent %d bytes again and read %d source bytes (%v)",
		sentBefore, total, res.ResumedFrom, resent, reread, time.Duration(res.Seconds*float64(time.Second)))
}

// killAt runs the import of args and SIGKILLs it once hold is reached.
func killAt(t *testing.T, hold *holdAt, env, args []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), cliTimeout)
	defer cancel()
	first := command(ctx, env, args...)
	var stderr bytes.Buffer
	first.Stdout, first.Stderr = io.Discard, &stderr
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-hold.reached:
	case <-ctx.Done():
		first.Process.Kill()
		first.Wait()
		t.Fatalf("the upload never reached 70%%:\n%s", stderr.String())
	}
	first.Process.Kill()
	first.Wait()
	hold.armed.Store(false)
}

// zstdSource serves the generated disk of size bytes zstd-compressed
// (with its size in the frame header, so that an import streams it),
// counting the bytes it writes.
func zstdSource(t *testing.T, size int64) (string, *atomic.Int64) {
	t.Helper()
	var buf bytes.Buffer
	enc, err := zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		t.Fatal(err)
	}
	enc.ResetContentSize(&buf, size)
	if _, err := io.Copy(enc, testdisk.New(size).Reader()); err != nil {
		t.Fatal(err)
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	var served atomic.Int64
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"resume-disk-zst"`)
		http.ServeContent(&killCountingWriter{ResponseWriter: w, n: &served}, r, "disk.img.zst", time.Unix(0, 0), bytes.NewReader(data))
	}))
	t.Cleanup(s.Close)
	return s.URL + "/disk.img.zst", &served
}

// forgetUpload deletes, in the registry, the upload the checkpoint file
// names (through the proxy at proxyAddr).
func forgetUpload(t *testing.T, checkpoint, proxyAddr string) {
	t.Helper()
	b, err := os.ReadFile(checkpoint)
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		Location string `json:"location"`
	}
	if err := json.Unmarshal(b, &rec); err != nil || rec.Location == "" {
		t.Fatalf("checkpoint file %s: %v", b, err)
	}
	// The saved location's _state is stale: distribution checks it on a
	// DELETE. Its GET answers a fresh one.
	loc := strings.Replace(rec.Location, proxyAddr, reg.Addr, 1)
	for _, method := range []string{http.MethodGet, http.MethodDelete} {
		req, err := http.NewRequestWithContext(t.Context(), method, loc, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.SetBasicAuth(reg.Username, reg.Password)
		resp, err := regTransport(reg).RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("%s of the upload: %s", method, resp.Status)
		}
		if next := resp.Header.Get("Location"); next != "" {
			if loc, err = resolve(loc, next); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// resolve is ref relative to base.
func resolve(base, ref string) (string, error) {
	b, err := url.Parse(base)
	if err != nil {
		return "", err
	}
	r, err := b.Parse(ref)
	if err != nil {
		return "", err
	}
	return r.String(), nil
}
