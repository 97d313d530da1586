package importer_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ulikunitz/xz"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/detect"
	"github.com/diskimporter/diskimporter/importer/qcow2/qcow2test"
	"github.com/diskimporter/diskimporter/importer/reason"
)

// countedSource is a test source that records the Range header of each
// request and counts the body bytes it wrote.
type countedSource struct {
	*testSource
	served atomic.Int64
	mu     sync.Mutex
	ranges []string
}

func newCountedSource(t *testing.T, h http.HandlerFunc) *countedSource {
	t.Helper()
	c := &countedSource{}
	c.testSource = newTestSource(t, func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		c.ranges = append(c.ranges, r.Header.Get("Range"))
		c.mu.Unlock()
		h(countingWriter{w, &c.served}, r)
	})
	return c
}

func (c *countedSource) rangesAsked() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.ranges...)
}

// countingWriter counts the body bytes written; embedding the interface
// hides any io.ReaderFrom, so every byte goes through Write.
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w countingWriter) Write(p []byte) (int, error) {
	// Counted before the write: the client may have the bytes (and the
	// test compare the count) before Write returns.
	w.n.Add(int64(len(p)))
	n, err := w.ResponseWriter.Write(p)
	w.n.Add(int64(n - len(p)))
	return n, err
}

func inspectOptions(source string) importer.InspectOptions {
	return importer.InspectOptions{SourceOptions: importer.SourceOptions{Source: source, SourceKeychain: anonymousKeychain{}}, Logger: slog.New(slog.DiscardHandler)}
}

func qcow2Image(t *testing.T, guest []byte, opts ...qcow2test.Option) []byte {
	t.Helper()
	img, err := qcow2test.Image(guest, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// xzBytes is compressed(t, detect.XZ, data, false) for another goroutine
// than the test's.
func xzBytes(data []byte) ([]byte, error) {
	var buf bytes.Buffer
	w, err := xz.NewWriter(&buf)
	if err == nil {
		_, err = w.Write(data)
	}
	if err == nil {
		err = w.Close()
	}
	return buf.Bytes(), err
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{9})
	r.Read(b)
	b[0] = 0 // no compression or format magic by chance
	return b
}

// TestInspect inspects each kind of source, format and compression, and
// sources an import would refuse, and checks what it found and how
// little it read.
func TestInspect(t *testing.T) {
	t.Parallel()
	const head = 64 << 10
	raw := diskBytes(t, 8<<20+512)
	iso := withISOSignature(diskBytes(t, 1<<20))
	guest := diskBytes(t, 3<<20)
	img := qcow2Image(t, guest)
	small := diskBytes(t, 512<<10)
	rawZst := compressed(t, detect.Zstd, small, false)
	rawZstStreamed := compressed(t, detect.Zstd, small, true)
	rawGz := compressed(t, detect.Gzip, small, false)
	// The xz encoder is slow under the race detector: the three at once.
	var imgXZ, rawXZ, nested []byte
	var errs [3]error
	var wg sync.WaitGroup
	wg.Go(func() { imgXZ, errs[0] = xzBytes(img) })
	wg.Go(func() { rawXZ, errs[1] = xzBytes(small) })
	wg.Go(func() { nested, errs[2] = xzBytes(rawGz) })
	wg.Wait()
	if err := errors.Join(errs[:]...); err != nil {
		t.Fatal(err)
	}
	backing := qcow2Image(t, guest[:1<<20], qcow2test.WithBackingFile("base.qcow2"))
	truncated := qcow2Image(t, guest[:1<<20], qcow2test.Truncated(50))
	huge := qcow2Image(t, guest[:1<<20], qcow2test.WithVirtualSize(3<<40))
	random := randomBytes(1 << 20)
	vmdk := append([]byte("KDMV"), make([]byte, 128<<10)...)
	corruptGz := append([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff}, randomBytes(64<<10)...)

	dir := t.TempDir()
	rawPath := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(rawPath, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	qcow2Info := &importer.QCOW2Info{Version: 3, VirtualSize: uint64(len(guest)), ClusterSize: 64 << 10, CompressionType: "zlib"}

	type served struct {
		bytes  int64 // body bytes the server wrote; -1 for a file
		ranges []string
	}
	for _, tc := range []struct {
		name   string
		data   []byte
		serve  func([]byte) http.HandlerFunc // nil: a file
		want   importer.Info
		refuse string // in ImportRefuses
		check  func(t *testing.T, info *importer.Info, s served)
	}{
		{
			name: "raw over http", data: raw, serve: rangeServer,
			want: importer.Info{Kind: "http", Compression: "none", Format: "raw", SizeAsDownloaded: int64(len(raw)),
				DiskSize: int64(len(raw)), SizeFrom: "content-length", VirtualSize: int64(len(raw)), RangeRequests: new(true), ETag: `"v1"`},
			check: func(t *testing.T, info *importer.Info, s served) {
				if info.BytesRead != head || s.bytes != head || !reflect.DeepEqual(s.ranges, []string{"bytes=0-65535"}) {
					t.Errorf("read %d bytes, served %d in %q; want the head alone, one Range request of 64 KiB of the %d bytes",
						info.BytesRead, s.bytes, s.ranges, len(raw))
				}
			},
		},
		{
			name: "raw file", data: raw,
			want: importer.Info{Kind: "file", Compression: "none", Format: "raw", SizeAsDownloaded: int64(len(raw)),
				DiskSize: int64(len(raw)), SizeFrom: "content-length", VirtualSize: int64(len(raw))},
			check: func(t *testing.T, info *importer.Info, _ served) {
				if info.BytesRead != head {
					t.Errorf("read %d bytes of the file, want %d", info.BytesRead, head)
				}
			},
		},
		{
			name: "iso", data: iso, serve: rangeServer,
			want: importer.Info{Kind: "http", Compression: "none", Format: "iso", SizeAsDownloaded: int64(len(iso)),
				DiskSize: int64(len(iso)), SizeFrom: "content-length", VirtualSize: int64(len(iso)), RangeRequests: new(true), ETag: `"v1"`},
		},
		{
			name: "qcow2", data: img, serve: rangeServer,
			want: importer.Info{Kind: "http", Compression: "none", Format: "qcow2", SizeAsDownloaded: int64(len(img)),
				DiskSize: int64(len(img)), SizeFrom: "content-length", VirtualSize: int64(len(guest)), QCOW2: qcow2Info,
				ConvertRaw: "random-access", RangeRequests: new(true), ETag: `"v1"`},
		},
		{
			name: "qcow2 with a backing file", data: backing, serve: rangeServer,
			want: importer.Info{Kind: "http", Compression: "none", Format: "qcow2", SizeAsDownloaded: int64(len(backing)),
				DiskSize: int64(len(backing)), SizeFrom: "content-length", VirtualSize: -1, BackingFileNamed: true, BackingFile: "base.qcow2",
				RefuseReason: "BackingFileRejected", RangeRequests: new(true), ETag: `"v1"`},
			refuse: `backing file "base.qcow2"`,
		},
		{
			name: "qcow2.xz", data: imgXZ, serve: rangeServer,
			want: importer.Info{Kind: "http", Compression: "xz", XZParallel: new(false), Format: "qcow2", SizeAsDownloaded: int64(len(imgXZ)),
				DiskSize: int64(len(img)), SizeFrom: "xz-index", VirtualSize: int64(len(guest)), QCOW2: qcow2Info,
				ConvertRaw: "spool", RangeRequests: new(true), ETag: `"v1"`},
			check: func(t *testing.T, info *importer.Info, s served) {
				// The head (the probe and what the decoder needs
				// more) and the tail, each a bounded Range request.
				tail := fmt.Sprintf("bytes=%d-%d", len(imgXZ)-head, len(imgXZ)-1)
				if len(s.ranges) < 2 || len(s.ranges) > 4 || s.ranges[0] != "bytes=0-65535" || s.ranges[len(s.ranges)-1] != tail {
					t.Errorf("Range requests %q; want the head in at most 3, then %s", s.ranges, tail)
				}
				for _, r := range s.ranges {
					if !strings.HasPrefix(r, "bytes=") || strings.HasSuffix(r, "-") {
						t.Errorf("Range request %q is not bounded", r)
					}
				}
				t.Logf("%d bytes of %d served, in %q", s.bytes, len(imgXZ), s.ranges)
				if s.bytes > 4*head || info.BytesRead != s.bytes {
					t.Errorf("served %d bytes of %d, read %d; want at most %d, all of them read", s.bytes, len(imgXZ), info.BytesRead, 4*head)
				}
			},
		},
		{
			name: "raw.zst with its size", data: rawZst, serve: rangeServer,
			want: importer.Info{Kind: "http", Compression: "zstd", Format: "raw", SizeAsDownloaded: int64(len(rawZst)),
				DiskSize: int64(len(small)), SizeFrom: "zstd-header", VirtualSize: int64(len(small)), RangeRequests: new(true), ETag: `"v1"`},
		},
		{
			name: "raw.zst streamed", data: rawZstStreamed, serve: rangeServer,
			want: importer.Info{Kind: "http", Compression: "zstd", Format: "raw", SizeAsDownloaded: int64(len(rawZstStreamed)),
				DiskSize: -1, SizeFrom: "spool", VirtualSize: -1, RangeRequests: new(true), ETag: `"v1"`},
		},
		{
			name: "raw.gz", data: rawGz, serve: rangeServer,
			want: importer.Info{Kind: "http", Compression: "gzip", Format: "raw", SizeAsDownloaded: int64(len(rawGz)),
				DiskSize: -1, SizeFrom: "spool", VirtualSize: -1, RangeRequests: new(true), ETag: `"v1"`},
		},
		{
			name: "raw from a server ignoring Range", data: raw, serve: plainServer,
			want: importer.Info{Kind: "http", Compression: "none", Format: "raw", SizeAsDownloaded: int64(len(raw)),
				DiskSize: int64(len(raw)), SizeFrom: "content-length", VirtualSize: int64(len(raw)), RangeRequests: new(false)},
			check: func(t *testing.T, info *importer.Info, s served) {
				if info.BytesRead != head || len(s.ranges) != 1 {
					t.Errorf("read %d bytes in %d requests; want the first %d of the one response", info.BytesRead, len(s.ranges), head)
				}
			},
		},
		{
			name: "raw.xz from a server ignoring Range", data: rawXZ, serve: plainServer,
			want: importer.Info{Kind: "http", Compression: "xz", XZParallel: new(false), Format: "raw", SizeAsDownloaded: int64(len(rawXZ)),
				DiskSize: -1, SizeFrom: "spool", VirtualSize: -1, RangeRequests: new(false)},
			check: func(t *testing.T, info *importer.Info, s served) {
				if info.BytesRead > 4*head || len(s.ranges) != 1 {
					t.Errorf("read %d bytes of %d in %d requests; want at most %d of the one response", info.BytesRead, len(rawXZ), len(s.ranges), 4*head)
				}
			},
		},
		{
			name: "random bytes", data: random, serve: rangeServer,
			want: importer.Info{Kind: "http", Compression: "none", Format: "raw", SizeAsDownloaded: int64(len(random)),
				DiskSize: int64(len(random)), SizeFrom: "content-length", VirtualSize: int64(len(random)), RangeRequests: new(true), ETag: `"v1"`},
		},
		{
			name: "truncated qcow2 header", data: truncated, serve: rangeServer,
			want: importer.Info{Kind: "http", Compression: "none", Format: "qcow2", SizeAsDownloaded: int64(len(truncated)),
				DiskSize: int64(len(truncated)), SizeFrom: "content-length", VirtualSize: -1, RefuseReason: "CorruptSource", RangeRequests: new(true), ETag: `"v1"`},
			refuse: "truncated",
		},
		{
			name: "qcow2 over the default --max-virtual-size", data: huge, serve: rangeServer,
			want: importer.Info{Kind: "http", Compression: "none", Format: "qcow2", SizeAsDownloaded: int64(len(huge)),
				DiskSize: int64(len(huge)), SizeFrom: "content-length", VirtualSize: 3 << 40,
				QCOW2:      &importer.QCOW2Info{Version: 3, VirtualSize: 3 << 40, ClusterSize: 64 << 10, CompressionType: "zlib"},
				ConvertRaw: "random-access", RefuseReason: "TooLarge", RangeRequests: new(true), ETag: `"v1"`},
			refuse: "MaxVirtualSize",
		},
		{
			name: "vmdk", data: vmdk, serve: rangeServer,
			want: importer.Info{Kind: "http", Compression: "none", Format: "vmdk", SizeAsDownloaded: int64(len(vmdk)),
				DiskSize: int64(len(vmdk)), SizeFrom: "content-length", VirtualSize: -1, RefuseReason: "UnsupportedFormat", RangeRequests: new(true), ETag: `"v1"`},
			refuse: "vmdk",
		},
		{
			name: "gzip inside xz", data: nested, serve: rangeServer,
			want: importer.Info{Kind: "http", Compression: "xz", XZParallel: new(false), SizeAsDownloaded: int64(len(nested)),
				DiskSize: int64(len(rawGz)), SizeFrom: "xz-index", VirtualSize: -1, RefuseReason: "UnsupportedFormat", RangeRequests: new(true), ETag: `"v1"`},
			refuse: "nested compression",
		},
		{
			name: "corrupt gzip", data: corruptGz, serve: rangeServer,
			want: importer.Info{Kind: "http", Compression: "gzip", SizeAsDownloaded: int64(len(corruptGz)),
				DiskSize: -1, SizeFrom: "spool", VirtualSize: -1, RefuseReason: "CorruptSource", RangeRequests: new(true), ETag: `"v1"`},
			refuse: "gzip",
		},
		{
			// An import refuses an empty disk: inspect says so.
			name: "empty", data: []byte{}, serve: rangeServer,
			want: importer.Info{Kind: "http", Compression: "none", Format: "raw", SizeAsDownloaded: 0,
				DiskSize: 0, SizeFrom: "content-length", VirtualSize: 0, RefuseReason: "UnsupportedFormat", RangeRequests: new(false), ETag: `"v1"`},
			refuse: "empty",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			source := rawPath
			var src *countedSource
			if tc.serve != nil {
				src = newCountedSource(t, tc.serve(tc.data))
				source = src.url
			} else if !bytes.Equal(tc.data, raw) {
				t.Fatal("file rows serve raw")
			}
			info, err := importer.Inspect(testContext(t), inspectOptions(source))
			if err != nil {
				t.Fatalf("Inspect: %v (reason %s)", err, reason.Of(err))
			}
			got := *info
			if got.Source != source {
				t.Errorf("source %q, want %q", got.Source, source)
			}
			if !strings.Contains(got.ImportRefuses, tc.refuse) || (tc.refuse == "") != (got.ImportRefuses == "") {
				t.Errorf("import_refuses %q, want it to hold %q", got.ImportRefuses, tc.refuse)
			}
			got.Source, got.ImportRefuses, got.BytesRead = "", "", 0
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Inspect:\n got %s\nwant %s", dump(&got), dump(&tc.want))
			}
			if info.BytesRead <= 0 && len(tc.data) > 0 {
				t.Errorf("bytes_read %d", info.BytesRead)
			}
			if tc.check != nil {
				s := served{bytes: -1}
				if src != nil {
					s = served{src.served.Load(), src.rangesAsked()}
				}
				tc.check(t, info, s)
			}
		})
	}
}

func dump(info *importer.Info) string {
	s := fmt.Sprintf("%+v", *info)
	if info.RangeRequests != nil {
		s += fmt.Sprintf(" RangeRequests=%v", *info.RangeRequests)
	}
	if info.QCOW2 != nil {
		s += fmt.Sprintf(" QCOW2=%+v", *info.QCOW2)
	}
	return s
}

// TestInspectErrors: a source that cannot be read is an error with the
// class an import would report, never an answer.
func TestInspectErrors(t *testing.T) {
	t.Parallel()
	notFound := newTestSource(t, status(http.StatusNotFound))
	forbidden := newTestSource(t, status(http.StatusForbidden))
	for _, tc := range []struct {
		name, source string
		reason       reason.Reason
		want         error
	}{
		{"404", notFound.url, "SourceNotFound", importer.ErrSourceNotFound},
		{"403", forbidden.url, "SourceUnauthorized", importer.ErrSourceUnauthorized},
		{"unreachable", refusedURL(t), "SourceUnavailable", importer.ErrSourceUnavailable},
		{"no such file", filepath.Join(t.TempDir(), "none.img"), "SourceNotFound", importer.ErrSourceNotFound},
		{"directory", t.TempDir(), "InvalidOptions", importer.ErrInvalidOptions},
		{"no source", "", "InvalidOptions", importer.ErrInvalidOptions},
		{"unknown scheme", "ftp://example.invalid/disk.img", "InvalidOptions", importer.ErrInvalidOptions},
		{"bad docker reference", "docker://registry.example/Upper:case", "InvalidOptions", importer.ErrInvalidOptions},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			info, err := importer.Inspect(testContext(t), inspectOptions(tc.source))
			if !errors.Is(err, tc.want) || reason.Of(err) != tc.reason || info != nil {
				t.Errorf("Inspect = %+v, %v (reason %s); want %v, %s", info, err, reason.Of(err), tc.want, tc.reason)
			}
		})
	}
}

// TestInspectRegistrySource inspects the disk of an image the import path
// pushed, through docker://, reading its head through a Range request.
func TestInspectRegistrySource(t *testing.T) {
	t.Parallel()
	guest := diskBytes(t, 2<<20)
	img := qcow2Image(t, guest)
	reg := newTestRegistry(t)
	res, err := importer.Run(testContext(t), baseOptions(reg, newTestSource(t, rangeServer(img)).url))
	if err != nil {
		t.Fatal(err)
	}
	for _, source := range []string{"docker://" + res.Destination, "docker://" + res.Reference} {
		o := inspectOptions(source)
		o.SourceCAFile = reg.caFile
		info, err := importer.Inspect(testContext(t), o)
		if err != nil {
			t.Fatalf("%s: %v (reason %s)", source, err, reason.Of(err))
		}
		want := importer.Info{Source: source, Kind: "docker", Compression: "none", Format: "qcow2", SizeAsDownloaded: int64(len(img)),
			DiskSize: int64(len(img)), SizeFrom: "content-length", VirtualSize: int64(len(guest)),
			QCOW2:      &importer.QCOW2Info{Version: 3, VirtualSize: uint64(len(guest)), ClusterSize: 64 << 10, CompressionType: "zlib"},
			ConvertRaw: "random-access", RangeRequests: new(true), Docker: info.Docker, BytesRead: info.BytesRead}
		if !reflect.DeepEqual(*info, want) {
			t.Errorf("%s:\n got %s\nwant %s", source, dump(info), dump(&want))
		}
		d := info.Docker
		if d == nil || d.Reference != res.Reference || d.Digest != res.ManifestDigest || d.Layer != res.LayerDigest ||
			d.LayerSize != res.LayerSize || d.DiskPath != "disk/disk.qcow2" || d.DiskOffset <= 0 || d.LayerMediaType == "" {
			t.Errorf("%s: docker %+v, want the image of %+v", source, d, *res)
		}
		// The manifest, the tar headers before the disk and the head.
		if info.BytesRead < 64<<10 || info.BytesRead > 80<<10 {
			t.Errorf("%s: read %d bytes of a %d-byte layer; want the head and a few KiB", source, info.BytesRead, res.LayerSize)
		}
	}

	o := inspectOptions("docker://" + reg.host + "/no/such:image")
	o.SourceCAFile = reg.caFile
	if _, err := importer.Inspect(testContext(t), o); !errors.Is(err, importer.ErrSourceNotFound) {
		t.Errorf("missing image: %v, want ErrSourceNotFound", err)
	}
}

// TestInspectHostileHeads inspects qcow2 heads with random bytes changed,
// and random short files: each is an answer (the source was read), never a
// panic, and a qcow2 an import would take has its header described.
func TestInspectHostileHeads(t *testing.T) {
	t.Parallel()
	img := qcow2Image(t, diskBytes(t, 256<<10), qcow2test.WithExtension(qcow2test.ExtFeatureTable, make([]byte, 48)))
	path := filepath.Join(t.TempDir(), "hostile.img")
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 300 {
		b := bytes.Clone(img)
		if i%3 == 2 {
			b = b[:r.IntN(200)]
		}
		for range 1 + r.IntN(4) {
			if len(b) > 4 {
				b[4+r.IntN(min(len(b)-4, 200))] = byte(r.Uint32())
			}
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		info, err := importer.Inspect(testContext(t), inspectOptions(path))
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if info.Format == "qcow2" && (info.RefuseReason == "") != (info.QCOW2 != nil) {
			t.Errorf("case %d: refused %q, qcow2 %+v: want a header exactly when not refused", i, info.ImportRefuses, info.QCOW2)
		}
	}
}

// TestInspectXZParallel: inspect tells an xz source written in blocks that
// state their sizes (xz -T0, --block-size) from one that is not (a single
// block without sizes, as ulikunitz/xz and single-threaded xz write it).
func TestInspectXZParallel(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("xz"); err != nil {
		t.Skip("xz (xz-utils) is not installed")
	}
	data := diskBytes(t, 2<<20)
	cmd := exec.Command("xz", "-0", "-T2", "--block-size=1MiB", "-c")
	cmd.Stdin = bytes.NewReader(data)
	blocks, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	single, err := xzBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		xz   []byte
		want bool
	}{{"xz --block-size", blocks, true}, {"one block", single, false}} {
		src := newCountedSource(t, rangeServer(c.xz))
		info, err := importer.Inspect(testContext(t), inspectOptions(src.url))
		if err != nil {
			t.Fatal(err)
		}
		if info.XZParallel == nil || *info.XZParallel != c.want {
			t.Errorf("%s: xz_parallel %v, want %v", c.name, info.XZParallel, c.want)
		}
	}
}
