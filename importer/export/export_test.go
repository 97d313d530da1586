package export_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/blob"
	"github.com/diskimporter/diskimporter/importer/export"
	"github.com/diskimporter/diskimporter/importer/imagetest"
	"github.com/diskimporter/diskimporter/importer/reason"
	"github.com/diskimporter/diskimporter/layer"
)

// ---------------------------------------------------------------------------
// An in-memory registry (after importer/blob's tests).

const (
	user = "alice"
	pass = "secret"
)

// testRegistry is a minimal in-memory registry over TLS with basic auth
// (what a pull needs: manifests by tag or digest, blobs with Range
// requests), whose blob GETs can be redirected to a "store" on another
// port, damaged, and counted.
type testRegistry struct {
	srv, store *httptest.Server
	host       string
	redirect   bool
	damage     atomic.Bool  // flip a byte of 206 answers past the first byte
	served     atomic.Int64 // body bytes of blob GETs sent
	// onServed, when set, is called with the running count of served
	// bytes after each write of a blob body.
	onServed atomic.Pointer[func(total int64)]

	mu        sync.Mutex
	manifests map[string]manifest // by REPO:TAG and REPO@DIGEST
	blobs     map[string][]byte   // by digest
}

type manifest struct {
	mediaType types.MediaType
	raw       []byte
	digest    string
}

var (
	manifestPath = regexp.MustCompile(`^/v2/(.+)/manifests/([^/]+)$`)
	blobPath     = regexp.MustCompile(`^/v2/(.+)/blobs/(sha256:[0-9a-f]{64})$`)
)

func newTestRegistry(t *testing.T, redirect bool) *testRegistry {
	t.Helper()
	r := &testRegistry{redirect: redirect, manifests: map[string]manifest{}, blobs: map[string][]byte{}}
	r.store = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		req.URL.Path = req.URL.Query().Get("path")
		r.serveBlob(w, req)
	}))
	t.Cleanup(r.store.Close)
	r.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if u, p, ok := req.BasicAuth(); !ok || u != user || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		switch m := manifestPath.FindStringSubmatch(req.URL.Path); {
		case req.URL.Path == "/v2/":
			w.WriteHeader(http.StatusOK)
		case m != nil:
			sep := ":"
			if strings.HasPrefix(m[2], "sha256:") {
				sep = "@"
			}
			r.mu.Lock()
			mf, ok := r.manifests[m[1]+sep+m[2]]
			r.mu.Unlock()
			if !ok {
				http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}`, http.StatusNotFound)
				return
			}
			w.Header().Set("Content-Type", string(mf.mediaType))
			w.Header().Set("Docker-Content-Digest", mf.digest)
			http.ServeContent(w, req, "", time.Time{}, bytes.NewReader(mf.raw))
		case r.redirect && req.Method == http.MethodGet && blobPath.MatchString(req.URL.Path):
			http.Redirect(w, req, r.store.URL+"/presigned?path="+req.URL.Path+"&X-Amz-Signature=s", http.StatusTemporaryRedirect)
		default:
			r.serveBlob(w, req)
		}
	}))
	t.Cleanup(r.srv.Close)
	r.host = strings.TrimPrefix(r.srv.URL, "https://")
	return r
}

func (r *testRegistry) serveBlob(w http.ResponseWriter, req *http.Request) {
	m := blobPath.FindStringSubmatch(req.URL.Path)
	if m == nil {
		http.NotFound(w, req)
		return
	}
	r.mu.Lock()
	b, ok := r.blobs[m[2]]
	r.mu.Unlock()
	if !ok {
		http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}`, http.StatusNotFound)
		return
	}
	cw := &countingWriter{ResponseWriter: w, r: r}
	w = cw
	if r.damage.Load() && !strings.HasPrefix(req.Header.Get("Range"), "bytes=0-") && req.Header.Get("Range") != "" {
		w = &imagetest.FlipWriter{ResponseWriter: cw}
	}
	w.Header().Set("Docker-Content-Digest", m[2])
	http.ServeContent(w, req, "", time.Time{}, bytes.NewReader(b))
}

type countingWriter struct {
	http.ResponseWriter
	r *testRegistry
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	total := c.r.served.Add(int64(n))
	if f := c.r.onServed.Load(); f != nil {
		(*f)(total)
	}
	return n, err
}

// transport trusts both test servers.
func (r *testRegistry) transport() http.RoundTripper {
	t := r.srv.Client().Transport.(*http.Transport).Clone()
	t.TLSClientConfig.RootCAs.AddCert(r.store.Certificate())
	return t
}

type keychain struct{}

func (keychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return &authn.Basic{Username: user, Password: pass}, nil
}

// push stores img as repo:v1 and returns the reference.
func (r *testRegistry) push(t *testing.T, repo string, img v1.Image) string {
	t.Helper()
	r.putImage(t, repo, "v1", img)
	return r.host + "/" + repo + ":v1"
}

// putImage stores img, its config and its layers, under repo:tag (when
// tag is not empty) and repo@digest.
func (r *testRegistry) putImage(t *testing.T, repo, tag string, img v1.Image) manifest {
	t.Helper()
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	mt, err := img.MediaType()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	blobs := map[string][]byte{digestOf(cfg): cfg}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		b, ok := layerBytes.Load(d.String())
		if !ok {
			t.Fatalf("layer %s was not made with staticLayer", d)
		}
		blobs[d.String()] = b.([]byte)
	}
	return r.put(repo, tag, manifest{mediaType: mt, raw: raw, digest: digestOf(raw)}, blobs)
}

// putIndex stores an index of the images, one per platform, as repo:tag.
func (r *testRegistry) putIndex(t *testing.T, repo, tag string, img v1.Image, platforms ...v1.Platform) {
	t.Helper()
	idx := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
	m := r.putImage(t, repo, "", img)
	for _, p := range platforms {
		idx.Manifests = append(idx.Manifests, v1.Descriptor{MediaType: m.mediaType, Size: int64(len(m.raw)),
			Digest: v1.Hash{Algorithm: "sha256", Hex: strings.TrimPrefix(m.digest, "sha256:")}, Platform: &p})
	}
	raw, err := json.Marshal(idx)
	if err != nil {
		t.Fatal(err)
	}
	r.put(repo, tag, manifest{mediaType: types.OCIImageIndex, raw: raw, digest: digestOf(raw)}, nil)
}

func (r *testRegistry) put(repo, tag string, m manifest, blobs map[string][]byte) manifest {
	r.mu.Lock()
	defer r.mu.Unlock()
	maps.Copy(r.blobs, blobs)
	r.manifests[repo+"@"+m.digest] = m
	if tag != "" {
		r.manifests[repo+":"+tag] = m
	}
	return m
}

func digestOf(b []byte) string {
	return fmt.Sprintf("sha256:%x", sha256.Sum256(b))
}

// options exports source to output with small pieces.
func (r *testRegistry) options(t *testing.T, source, output string) export.Options {
	return export.Options{
		Source:          "docker://" + source,
		Output:          output,
		RegistryOptions: importer.RegistryOptions{Keychain: keychain{}},
		Transport:       r.transport(),
		ReadOptions:     importer.ReadOptions{Connections: 4, ChunkSize: 64 << 10, Retries: 1, RetryWait: time.Millisecond},
		Logger:          slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// ---------------------------------------------------------------------------
// Disks and images.

// mixedDisk is n bytes of random blocks, zero blocks and text, in runs of
// 16 KiB.
func mixedDisk(n int) []byte {
	b := make([]byte, n)
	rng := rand.New(rand.NewPCG(uint64(n), 7))
	for i := 0; i < n; i += 16 << 10 {
		blk := b[i:min(n, i+16<<10)]
		switch (i >> 14) % 3 {
		case 0:
			for j := range blk {
				blk[j] = byte(rng.Uint32())
			}
		case 2:
			for j := range blk {
				blk[j] = "diskimporter "[j%13]
			}
		}
	}
	return b
}

// sparseDisk is n bytes of zeros but for a few non-zero bytes.
func sparseDisk(n int) []byte {
	b := make([]byte, n)
	for _, at := range []int{0, 5<<20 + 17, n / 2, n - 1} {
		b[at] = 0xa5
	}
	copy(b[1<<20:], "a boot sector, or something like it")
	return b
}

// diskimporterLayer is the layer diskimporter writes for disk.
func diskimporterLayer(t *testing.T, disk []byte) v1.Layer {
	t.Helper()
	l, err := layer.New(io.NopCloser(bytes.NewReader(disk)), int64(len(disk)))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var b bytes.Buffer
	b.Grow(len(disk) + 8<<10)
	if _, err := io.Copy(&b, rc); err != nil {
		t.Fatal(err)
	}
	return staticLayer(t, b.Bytes(), types.OCIUncompressedLayer)
}

// layerBytes are the bytes of the layers staticLayer made, by digest, for
// the test registry to serve without a copy.
var layerBytes sync.Map

// staticLayer is a layer of the bytes b.
func staticLayer(t *testing.T, b []byte, mt types.MediaType) v1.Layer {
	t.Helper()
	l := static.NewLayer(b, mt)
	d, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	layerBytes.Store(d.String(), b)
	return l
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// checkOutput checks that path holds disk and nothing else is left beside
// it.
func checkOutput(t *testing.T, path string, disk []byte) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for off := 0; ; {
		n, err := io.ReadFull(f, buf)
		if n > len(disk)-off || !bytes.Equal(buf[:n], disk[off:off+n]) {
			t.Errorf("%s differs from the disk in bytes %d-%d", path, off, off+n-1)
			break
		}
		off += n
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			if off != len(disk) {
				t.Errorf("%s is %d bytes, the disk %d", path, off, len(disk))
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	checkLeftovers(t, path, true)
}

// checkLeftovers lists the directory of path: it must hold path (when
// want) and nothing else.
func checkLeftovers(t *testing.T, path string, want bool) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	wantNames := []string{}
	if want {
		wantNames = []string{filepath.Base(path)}
	}
	if strings.Join(names, ",") != strings.Join(wantNames, ",") {
		t.Errorf("the output directory holds %q, want %q", names, wantNames)
	}
}

// ---------------------------------------------------------------------------

func TestExport(t *testing.T) {
	t.Parallel()
	disk := mixedDisk(3<<20 + 12345)
	for _, tc := range []struct {
		name     string
		redirect bool
		layer    func(t *testing.T) v1.Layer
		path     string
	}{
		{name: "diskimporter layer", path: "disk/disk.img",
			layer: func(t *testing.T) v1.Layer { return diskimporterLayer(t, disk) }},
		{name: "through a redirect to a store", redirect: true, path: "disk/disk.img",
			layer: func(t *testing.T) v1.Layer { return diskimporterLayer(t, disk) }},
		{name: "gzip layer", path: "disk/root.raw",
			layer: func(t *testing.T) v1.Layer {
				return staticLayer(t, imagetest.Gzip(imagetest.Tar(t, "disk/", "", "disk/root.raw", string(disk))), types.OCILayer)
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := newTestRegistry(t, tc.redirect)
			src := reg.push(t, "disks/x", imagetest.Image(t, tc.layer(t)))
			out := filepath.Join(t.TempDir(), "disk.img")
			res, err := export.Export(testContext(t), reg.options(t, src, out))
			if err != nil {
				t.Fatal(err)
			}
			checkOutput(t, out, disk)
			if res.Source != "docker://"+src || !strings.Contains(res.Reference, "@sha256:") || !strings.HasPrefix(res.LayerDigest, "sha256:") ||
				res.DiskPath != tc.path || res.Output != out || res.Size != int64(len(disk)) || res.ResumedFrom != 0 ||
				res.AllocatedBytes == nil || res.Seconds < 0 || res.MBPerSecond < 0 {
				b, _ := json.Marshal(res)
				t.Errorf("result %s", b)
			}
		})
	}

	t.Run("stdout", func(t *testing.T) {
		t.Parallel()
		reg := newTestRegistry(t, true)
		src := reg.push(t, "disks/stdout", imagetest.Image(t, diskimporterLayer(t, disk)))
		var buf bytes.Buffer
		o := reg.options(t, src, export.Stdout)
		o.Stdout = &buf
		res, err := export.Export(testContext(t), o)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf.Bytes(), disk) {
			t.Errorf("stdout got %d bytes, not the %d of the disk", buf.Len(), len(disk))
		}
		if res.Output != "-" || res.AllocatedBytes != nil {
			t.Errorf("result output %q, allocated %v", res.Output, res.AllocatedBytes)
		}
	})

	t.Run("not a regular file", func(t *testing.T) {
		t.Parallel()
		if _, err := os.Stat(os.DevNull); err != nil {
			t.Skip(err)
		}
		reg := newTestRegistry(t, false)
		src := reg.push(t, "disks/devnull", imagetest.Image(t, diskimporterLayer(t, disk)))
		res, err := export.Export(testContext(t), reg.options(t, src, os.DevNull))
		if err != nil {
			t.Fatal(err)
		}
		if res.Size != int64(len(disk)) || res.AllocatedBytes != nil {
			t.Errorf("result size %d, allocated %v", res.Size, res.AllocatedBytes)
		}
		if _, err := os.Stat(os.DevNull + ".partial"); err == nil {
			t.Errorf("%s.partial exists", os.DevNull)
		}
	})
}

// TestSparse exports a mostly-zero 64 MiB disk: the file takes almost no
// space; with Dense (on a smaller disk, to keep the test short), all of it.
func TestSparse(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		size  int
		dense bool
	}{{64 << 20, false}, {16 << 20, true}} {
		t.Run(fmt.Sprintf("dense=%v", tc.dense), func(t *testing.T) {
			t.Parallel()
			disk := sparseDisk(tc.size)
			reg := newTestRegistry(t, false)
			src := reg.push(t, "disks/sparse", imagetest.Image(t, diskimporterLayer(t, disk)))
			out := filepath.Join(t.TempDir(), "disk.img")
			o := reg.options(t, src, out)
			o.Dense = tc.dense
			o.ChunkSize = 4 << 20
			res, err := export.Export(testContext(t), o)
			if err != nil {
				t.Fatal(err)
			}
			checkOutput(t, out, disk)
			if res.AllocatedBytes == nil {
				t.Fatal("no allocated_bytes in the result")
			}
			alloc := *res.AllocatedBytes
			t.Logf("%d bytes allocated for %d in %.2fs", alloc, tc.size, res.Seconds)
			switch {
			case !tc.dense && alloc > 1<<20:
				t.Errorf("sparse export allocated %d bytes of a %d-byte disk with 5 non-zero blocks", alloc, tc.size)
			case tc.dense && alloc < int64(tc.size)*9/10:
				// A file system that compresses or deduplicates would fail this.
				t.Errorf("dense export allocated only %d bytes of %d", alloc, tc.size)
			}
		})
	}
}

func TestResume(t *testing.T) {
	t.Parallel()
	const size = 8<<20 + 4321
	disk := mixedDisk(size)
	for _, tc := range []struct {
		name  string
		dense bool
	}{{"sparse", false}, {"dense", true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := newTestRegistry(t, true)
			src := reg.push(t, "disks/resume", imagetest.Image(t, diskimporterLayer(t, disk)))
			out := filepath.Join(t.TempDir(), "disk.img")
			o := reg.options(t, src, out)
			o.Dense = tc.dense
			o.CheckpointInterval = 1 << 20

			// First run: cancelled once the registry has sent about half.
			ctx, cancel := context.WithCancel(testContext(t))
			stop := func(total int64) {
				if total >= size/2 {
					cancel()
				}
			}
			reg.onServed.Store(&stop)
			_, err := export.Export(ctx, o)
			if !errors.Is(err, context.Canceled) || reason.Of(err) != "Cancelled" {
				t.Fatalf("cancelled export: %v (%s), want Cancelled", err, reason.Of(err))
			}
			first := reg.served.Load()
			if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the output exists after a cancelled export: %v", err)
			}
			var st struct {
				LayerDigest string `json:"layer_digest"`
				Done        int64  `json:"done"`
				Sparse      bool   `json:"sparse"`
				SHA256State []byte `json:"sha256_state"`
			}
			b, err := os.ReadFile(out + ".partial.state")
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &st); err != nil {
				t.Fatal(err)
			}
			partial, err := os.ReadFile(out + ".partial")
			if err != nil {
				t.Fatal(err)
			}
			if st.Done < 1<<20 || st.Done > size/2 || int64(len(partial)) < st.Done || !bytes.Equal(partial[:st.Done], disk[:st.Done]) ||
				st.Sparse == tc.dense || len(st.SHA256State) == 0 {
				t.Fatalf("after the cancel: state %s, partial file %d bytes", b, len(partial))
			}

			// Second run: goes on from there.
			reg.onServed.Store(nil)
			reg.served.Store(0)
			res, err := export.Export(testContext(t), o)
			if err != nil {
				t.Fatal(err)
			}
			second := reg.served.Load()
			checkOutput(t, out, disk)
			t.Logf("first run: served %d bytes, left %d done; second run: resumed from %d, served %d bytes (disk %d)",
				first, st.Done, res.ResumedFrom, second, size)
			if res.ResumedFrom != st.Done {
				t.Errorf("resumed_from %d, the state said %d", res.ResumedFrom, st.Done)
			}
			// The rest, plus the first GET's bytes (blob.Open reads the
			// tar headers from a first piece) and the tar's tail.
			rest := size - res.ResumedFrom
			if second < rest || second > rest+2*o.ChunkSize {
				t.Errorf("the second run was served %d bytes; %d were left to read", second, rest)
			}
		})
	}
}

func TestResumeStartsOver(t *testing.T) {
	t.Parallel()
	disk := mixedDisk(2<<20 + 99)
	other := mixedDisk(1<<20 + 5)
	reg := newTestRegistry(t, false)
	src := reg.push(t, "disks/a", imagetest.Image(t, diskimporterLayer(t, disk)))
	srcOther := reg.push(t, "disks/b", imagetest.Image(t, diskimporterLayer(t, other)))
	ctx := testContext(t)

	// A partial output of another disk, left by a cancelled export.
	out := filepath.Join(t.TempDir(), "disk.img")
	o := reg.options(t, srcOther, out)
	o.CheckpointInterval = 256 << 10
	cctx, cancel := context.WithCancel(ctx)
	stop := func(total int64) {
		if total >= 600<<10 {
			cancel()
		}
	}
	reg.onServed.Store(&stop)
	if _, err := export.Export(cctx, o); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled export: %v", err)
	}
	reg.onServed.Store(nil)
	if _, err := os.Stat(out + ".partial.state"); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name  string
		spoil func(t *testing.T)
	}{
		{"state of another disk", func(*testing.T) {}},
		{"garbage state", func(t *testing.T) {
			os.WriteFile(out+".partial", bytes.Repeat([]byte{1}, 3<<20), 0o644)
			os.WriteFile(out+".partial.state", []byte("{not json"), 0o644)
		}},
		{"state past the partial file", func(t *testing.T) {
			os.WriteFile(out+".partial", []byte("short"), 0o644)
			b, _ := json.Marshal(map[string]any{"version": 1, "layer_digest": layerDigest(t, disk), "disk_path": "disk/disk.img",
				"size": len(disk), "done": 1 << 20, "sha256_state": []byte("x")})
			os.WriteFile(out+".partial.state", b, 0o644)
		}},
		{"hash state of another byte", func(t *testing.T) {
			os.WriteFile(out+".partial", bytes.Repeat([]byte{1}, 3<<20), 0o644)
			b, _ := json.Marshal(map[string]any{"version": 1, "layer_digest": layerDigest(t, disk), "disk_path": "disk/disk.img",
				"size": len(disk), "done": 1 << 20, "sha256_state": make([]byte, 108)})
			os.WriteFile(out+".partial.state", b, 0o644)
		}},
	} {
		tc.spoil(t)
		res, err := export.Export(ctx, reg.options(t, src, out))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if res.ResumedFrom != 0 {
			t.Errorf("%s: resumed from %d", tc.name, res.ResumedFrom)
		}
		checkOutput(t, out, disk)
		os.Remove(out)
	}
}

// layerDigest is the digest of the layer diskimporter makes of disk.
func layerDigest(t *testing.T, disk []byte) string {
	d, err := diskimporterLayer(t, disk).Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	disk := mixedDisk(1<<20 + 77)

	t.Run("blob that does not match its digest", func(t *testing.T) {
		t.Parallel()
		for _, output := range []string{"file", "stdout"} {
			reg := newTestRegistry(t, false)
			src := reg.push(t, "x/damaged", imagetest.Image(t, diskimporterLayer(t, disk)))
			reg.damage.Store(true)
			out := filepath.Join(t.TempDir(), "disk.img")
			o := reg.options(t, src, out)
			o.CheckpointInterval = 256 << 10
			if output == "stdout" {
				o.Output, o.Stdout = export.Stdout, io.Discard
			}
			_, err := export.Export(testContext(t), o)
			if !errors.Is(err, blob.ErrDigest) || reason.Of(err) != "CorruptSource" {
				t.Errorf("%s: %v (%s), want ErrDigest, CorruptSource", output, err, reason.Of(err))
			}
			checkLeftovers(t, out, false)
		}
	})

	t.Run("no disk", func(t *testing.T) {
		t.Parallel()
		reg := newTestRegistry(t, false)
		src := reg.push(t, "x/nodisk", imagetest.Image(t, staticLayer(t, imagetest.Tar(t, "etc/hosts", "x", "disk/", "", "disks/a.img", "y"), types.OCIUncompressedLayer)))
		out := filepath.Join(t.TempDir(), "disk.img")
		_, err := export.Export(testContext(t), reg.options(t, src, out))
		if !errors.Is(err, blob.ErrNoDisk) || reason.Of(err) != "UnsupportedFormat" || !strings.Contains(err.Error(), "no regular file under disk/") {
			t.Errorf("%v (%s), want ErrNoDisk, UnsupportedFormat", err, reason.Of(err))
		}
		checkLeftovers(t, out, false)
	})

	t.Run("index without the platform", func(t *testing.T) {
		t.Parallel()
		reg := newTestRegistry(t, false)
		img := imagetest.Image(t, diskimporterLayer(t, disk))
		reg.putIndex(t, "x/index", "v1", img, v1.Platform{OS: "linux", Architecture: "s390x"}, v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"})
		ref := reg.host + "/x/index:v1"
		out := filepath.Join(t.TempDir(), "disk.img")
		_, err := export.Export(testContext(t), reg.options(t, ref, out))
		if !errors.Is(err, blob.ErrPlatform) || !strings.Contains(err.Error(), "linux/amd64; the index has linux/arm64/v8, linux/s390x") {
			t.Errorf("%v, want ErrPlatform listing linux/arm64/v8, linux/s390x", err)
		}
		checkLeftovers(t, out, false)
		o := reg.options(t, ref, out)
		o.Platform = "linux/arm64/v8"
		if _, err := export.Export(testContext(t), o); err != nil {
			t.Errorf("export of linux/arm64/v8: %v", err)
		}
		checkOutput(t, out, disk)
	})

	t.Run("401", func(t *testing.T) {
		t.Parallel()
		reg := newTestRegistry(t, false)
		src := reg.push(t, "x/auth", imagetest.Image(t, diskimporterLayer(t, disk)))
		out := filepath.Join(t.TempDir(), "disk.img")
		o := reg.options(t, src, out)
		o.Keychain = authn.NewMultiKeychain() // anonymous
		_, err := export.Export(testContext(t), o)
		if !errors.Is(err, importer.ErrSourceUnauthorized) || reason.Of(err) != "SourceUnauthorized" || !strings.Contains(err.Error(), "401") {
			t.Errorf("%v (%s), want SourceUnauthorized with the 401", err, reason.Of(err))
		}
		checkLeftovers(t, out, false)
	})

	t.Run("options", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		for _, tc := range []struct {
			o      export.Options
			reason reason.Reason
		}{
			{export.Options{Output: filepath.Join(dir, "x")}, "InvalidOptions"},
			{export.Options{Source: "example.com/a:b"}, "InvalidOptions"},
			{export.Options{Source: "docker://Not A Ref", Output: filepath.Join(dir, "x")}, "InvalidOptions"},
			{export.Options{Source: "example.com/a:b", Output: filepath.Join(dir, "x"), Platform: "linux"}, "InvalidOptions"},
			{export.Options{Source: "example.com/a:b", Output: filepath.Join(dir, "no/such/dir/x")}, "OutputError"},
			{export.Options{Source: "example.com/a:b", Output: dir}, "OutputError"},
		} {
			_, err := export.Export(t.Context(), tc.o)
			if got := reason.Of(err); got != tc.reason {
				t.Errorf("%+v: %v (%s), want %s", tc.o, err, got, tc.reason)
			}
		}
	})
}
