package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diskimporter/diskimporter/e2e/fault"
	"github.com/diskimporter/diskimporter/importer/testdisk"
	"github.com/diskimporter/diskimporter/layer"
	"github.com/klauspost/compress/gzip"
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
	r.Body = &fault.Body{RC: r.Body, Left: limit, Reached: h.reached, Count: &h.forwarded}
	return false
}

// killCase is an import killed once the registry holds 70% of its layer,
// and run again with the same --checkpoint.
type killCase struct {
	name string
	size int64 // of the disk
	// compress makes the file served of the disk; nil: the raw disk,
	// which a rerun reads again from the last checkpoint on (a Range
	// request).
	compress func(disk io.Reader, size int64) ([]byte, error)
	// tool, when set, is the program compress runs: the case is skipped
	// without it.
	tool string
	// between runs between the kill and the rerun.
	between func(t *testing.T, src *killSource, checkpoint, proxyAddr string)
	// fresh, when set, is the reason the rerun's log must give for
	// starting a fresh upload instead of going on.
	fresh string
}

// TestKilledResumes: an import SIGKILLed once the registry holds 70% of
// the layer, run again with the same --checkpoint, goes on where the
// registry stands: the rerun sends the registry the rest only and makes the
// image a clean import makes; the tag is absent until then. A raw source
// is read again from the last checkpoint on (a Range request); a zstd or
// xz one, whose size its header or index tells, is decoded again from its
// start and skipped forward; a gzip one, whose size only a spool tells, is
// spooled again. An upload the registry forgot, or a source that changed
// between the runs (another ETag, other bytes), makes a fresh upload whose
// image is the source's new one.
func TestKilledResumes(t *testing.T) {
	needE2E(t)
	t.Parallel()
	const size = 128 << 20
	for _, tc := range []killCase{
		{name: "raw", size: size},
		{name: "zstd", size: size, compress: zstdOf},
		// gzip and xz encoders are slow (Go's under -race, the xz tool
		// anyway): smaller disks.
		{name: "gzip", size: 32 << 20, compress: gzipFastOf},
		{name: "xz", size: 32 << 20, compress: xzToolOf, tool: "xz"},
		{name: "forgotten upload", size: size, between: forgetSourceUpload, fresh: "does not know the upload"},
		{name: "changed source", size: size, between: changeSource, fresh: "the source was"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, err := exec.LookPath(tc.tool); tc.tool != "" && err != nil {
				t.Skipf("%s not found: %v", tc.tool, err)
			}
			killAndResume(t, tc)
		})
	}
}

// killAndResume imports the source of tc, killed at 70% of the layer
// upload, then again.
func killAndResume(t *testing.T, tc killCase) {
	t.Helper()
	const interval = 8 << 20
	total, err := layer.TarSize(layer.DefaultDiskName, tc.size)
	if err != nil {
		t.Fatal(err)
	}
	src := newKillSource(t, tc)
	hold := &holdAt{at: total * 7 / 10, reached: make(chan struct{}, 1)}
	hold.armed.Store(true)
	proxy := newFaultProxy(t, hold.handle)
	repo := newRepo(t)
	checkpoint := filepath.Join(t.TempDir(), "upload.checkpoint")
	args := []string{"--source", src.url, "--destination", proxy.addr + "/" + repo + ":v1", "--ca-file", proxy.caFile,
		"--log-format", "json", "--checkpoint", checkpoint, "--checkpoint-interval", strconv.Itoa(interval)}
	env := childEnv(t, credsEnv(reg)...)
	killAt(t, hold, env, args)
	checkNoTag(t, reg, repo, "v1")
	if _, err := os.Stat(checkpoint); err != nil {
		t.Fatalf("no checkpoint file after the kill: %v", err)
	}
	if tc.between != nil {
		tc.between(t, src, checkpoint, proxy.addr)
	}
	sentBefore, servedBefore := hold.forwarded.Load(), src.served.Load()

	r := runImport(t, env, args...)
	res := parseSuccess(t, r)
	if want := src.digest(); res.LayerDigest != want {
		t.Errorf("layer %s, want %s, the layer of the disk the source serves", res.LayerDigest, want)
	}
	if tc.fresh != "" {
		if res.Resumes != 0 || !strings.Contains(logLineWith(r.stderr, "starting a fresh one"), tc.fresh) {
			t.Errorf("resumes %d; want a fresh upload, because %s, said in the log:\n%s", res.Resumes, tc.fresh, r.stderr)
		}
		return
	}
	if res.Resumes != 1 || res.ResumedFrom < total*6/10 {
		t.Errorf("resumes %d from %d, want 1 from about %d", res.Resumes, res.ResumedFrom, total*7/10)
	}
	resent := hold.forwarded.Load() - total // both runs
	if resent < 0 || resent > 1<<20 {
		t.Errorf("the registry was sent %d layer bytes again, want at most what was in flight at the kill", resent)
	}
	reread := src.served.Load() - servedBefore
	if bound := tc.size - res.ResumedFrom + interval + 4*8<<20; tc.compress == nil && reread > bound {
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

// killSource serves one version of a disk, as it is or compressed, with
// Range support and an ETag, counting the body bytes it writes; it can be
// made to serve another version.
type killSource struct {
	url    string
	served atomic.Int64
	tc     killCase

	mu      sync.Mutex
	etag    string
	content []byte      // the file served, when compressed
	disk    io.ReaderAt // the disk, when served as it is
	want    string      // the layer a correct import of the disk makes
}

// newKillSource serves the generated disk of tc.
func newKillSource(t *testing.T, tc killCase) *killSource {
	t.Helper()
	s := &killSource{tc: tc}
	s.serve(t, `"disk-v1"`, testdisk.New(tc.size))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		etag, file := s.etag, s.file()
		s.mu.Unlock()
		w.Header().Set("ETag", etag)
		http.ServeContent(&killCountingWriter{ResponseWriter: w, n: &s.served}, r, "", time.Unix(0, 0), file)
	}))
	t.Cleanup(srv.Close)
	s.url = srv.URL + "/disk"
	return s
}

// serve makes disk, with etag, the version served.
func (s *killSource) serve(t *testing.T, etag string, disk io.ReaderAt) {
	t.Helper()
	want := layerDigestOf(t, io.NewSectionReader(disk, 0, s.tc.size), s.tc.size)
	var content []byte
	if s.tc.compress != nil {
		var err error
		if content, err = s.tc.compress(io.NewSectionReader(disk, 0, s.tc.size), s.tc.size); err != nil {
			t.Fatal(err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.etag, s.disk, s.content, s.want = etag, disk, content, want
}

// file is a reader of the file served; s.mu is held.
func (s *killSource) file() io.ReadSeeker {
	if s.content != nil {
		return bytes.NewReader(s.content)
	}
	return io.NewSectionReader(s.disk, 0, s.tc.size)
}

// digest is the layer a correct import of the version served makes.
func (s *killSource) digest() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.want
}

// changeSource makes the source serve another version of its disk, with
// another ETag, between the runs: bytes the registry holds from the first
// run differ, so that going on with the upload would make an image of
// neither version.
func changeSource(t *testing.T, src *killSource, _, _ string) {
	src.serve(t, `"disk-v2"`, changedDisk{testdisk.New(src.tc.size)})
}

// forgetSourceUpload deletes, in the registry, the upload the checkpoint
// file names.
func forgetSourceUpload(t *testing.T, _ *killSource, checkpoint, proxyAddr string) {
	forgetUpload(t, checkpoint, proxyAddr)
}

// changedDisk is a generated disk with its second MiB inverted.
type changedDisk struct{ *testdisk.Disk }

func (d changedDisk) ReadAt(p []byte, off int64) (int, error) {
	n, err := d.Disk.ReadAt(p, off)
	for i := max(1<<20-off, 0); i < min(2<<20-off, int64(n)); i++ {
		p[i] ^= 0xff
	}
	return n, err
}

// layerDigestOf is the digest of the layer diskimporter makes of the size
// bytes of disk.
func layerDigestOf(t *testing.T, disk io.Reader, size int64) string {
	t.Helper()
	d, err := layer.DigestOf(disk, size)
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// logLineWith is the first line of log holding text, or "".
func logLineWith(log []byte, text string) string {
	for line := range bytes.Lines(log) {
		if bytes.Contains(line, []byte(text)) {
			return string(line)
		}
	}
	return ""
}

// zstdOf compresses the disk with zstd, its size in the frame header (so
// that an import streams it).
func zstdOf(disk io.Reader, size int64) ([]byte, error) {
	var buf bytes.Buffer
	enc, err := zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		return nil, err
	}
	enc.ResetContentSize(&buf, size)
	if _, err := io.Copy(enc, disk); err != nil {
		return nil, err
	}
	err = enc.Close()
	return buf.Bytes(), err
}

// gzipFastOf compresses the disk with gzip at its fastest level.
func gzipFastOf(disk io.Reader, _ int64) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		return nil, err
	}
	if _, err := io.Copy(zw, disk); err != nil {
		return nil, err
	}
	err = zw.Close()
	return buf.Bytes(), err
}

// xzToolOf compresses the disk with the xz tool at its fastest preset, in
// blocks on two threads; Go's xz encoder takes minutes under -race.
func xzToolOf(disk io.Reader, _ int64) ([]byte, error) {
	cmd := exec.Command("xz", "-0", "-T2", "-c")
	var out, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = disk, &out, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("xz: %w: %s", err, stderr.Bytes())
	}
	return out.Bytes(), nil
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
	// DELETE. Its GET answers a fresh one, which the registry refuses
	// while it still stores what the killed import sent: ask again.
	loc := strings.Replace(rec.Location, proxyAddr, reg.Addr, 1)
	for try := 0; ; try++ {
		if loc, err = askUpload(t, http.MethodGet, loc); err != nil {
			t.Fatal(err)
		}
		if _, err = askUpload(t, http.MethodDelete, loc); err == nil {
			return
		}
		if try == 10 {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// askUpload sends method to the upload at loc, in the registry, and
// returns the upload's next location.
func askUpload(t *testing.T, method, loc string) (string, error) {
	req, err := http.NewRequestWithContext(t.Context(), method, loc, nil)
	if err != nil {
		return "", err
	}
	req.SetBasicAuth(reg.Username, reg.Password)
	resp, err := regTransport(reg).RoundTrip(req)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return "", fmt.Errorf("%s of the upload: %s", method, resp.Status)
	}
	return resolve(loc, resp.Header.Get("Location"))
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
