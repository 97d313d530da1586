package e2e

import (
	"archive/tar"
	"bytes"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/decompress"
	"github.com/diskimporter/diskimporter/importer/qcow2/qcow2test"
	"github.com/diskimporter/diskimporter/importer/testdisk"
)

// Sizes of the disks of the format tests: small, since the xz encoder is
// slow.
const (
	formatsRawSize   = rawSize // the raw disk, from testdisk
	formatsGuestSize = 4 << 20 // the guest disk of the qcow2 image
	bzip2Path        = "/usr/bin/bzip2"
)

// How a formatSource serves a file.
const (
	// serveRange: http.ServeContent, with Content-Length, Accept-Ranges
	// and Range requests.
	serveRange = "range"
	// serveStream: chunked, neither Content-Length nor Range: the size
	// is known only at the end of the body.
	serveStream = "stream"
	// serveNoRange: Content-Length but no Range support.
	serveNoRange = "norange"
)

// formatSource is an HTTP server of the files of one test, each in the
// three serving modes, at /MODE/NAME.
type formatSource struct {
	*httptest.Server
	mu    sync.Mutex
	files map[string][]byte
}

func newFormatSource(t *testing.T) *formatSource {
	s := &formatSource{files: map[string][]byte{}}
	modTime := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{mode}/{name}", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		b, ok := s.files[r.PathValue("name")]
		s.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		switch r.PathValue("mode") {
		case serveRange:
			http.ServeContent(w, r, "", modTime, bytes.NewReader(b))
		case serveNoRange:
			w.Header().Set("Content-Length", strconv.Itoa(len(b)))
			_, _ = w.Write(b)
		case serveStream:
			// A flush before the end makes net/http send the body
			// chunked, without Content-Length.
			half := len(b) / 2
			_, _ = w.Write(b[:half])
			_ = http.NewResponseController(w).Flush()
			_, _ = w.Write(b[half:])
		default:
			http.NotFound(w, r)
		}
	})
	s.Server = httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

// add serves b as name and returns its URL in mode.
func (s *formatSource) add(name string, b []byte, mode string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.files[name] = b
	return s.URL + "/" + mode + "/" + name
}

// ---------------------------------------------------------------------------
// Compressors.

func gzipOf(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	if _, err := w.Write(b); err != nil {
		return nil, err
	}
	err := w.Close()
	return buf.Bytes(), err
}

func xzOf(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	w, err := xz.WriterConfig{DictCap: 1 << 20}.NewWriter(&buf)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(b); err != nil {
		return nil, err
	}
	err = w.Close()
	return buf.Bytes(), err
}

// zstdFCSOf compresses b in one frame whose header records its size.
func zstdFCSOf(b []byte) ([]byte, error) {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		return nil, err
	}
	defer enc.Close()
	z := enc.EncodeAll(b, nil)
	if n, ok := decompress.ZstdSize(z); !ok || n != int64(len(b)) {
		return nil, fmt.Errorf("EncodeAll wrote no frame content size (%d, %t)", n, ok)
	}
	return z, nil
}

// zstdStreamOf compresses b as a stream, as zstd does from a pipe: the
// frame header does not record the size.
func zstdStreamOf(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	w, err := zstd.NewWriter(&buf)
	if err != nil {
		return nil, err
	}
	for p := b; len(p) > 0; p = p[min(len(p), 256<<10):] {
		if _, err := w.Write(p[:min(len(p), 256<<10)]); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	if _, ok := decompress.ZstdSize(buf.Bytes()); ok {
		return nil, fmt.Errorf("the streamed zstd frame records its size")
	}
	return buf.Bytes(), nil
}

func bzip2Of(b []byte) ([]byte, error) {
	cmd := exec.Command(bzip2Path, "-c", "-1")
	cmd.Stdin = bytes.NewReader(b)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("bzip2: %w: %s", err, stderr.Bytes())
	}
	return out.Bytes(), nil
}

// compressT returns b compressed by f, failing t on an error.
func compressT(t *testing.T, f func([]byte) ([]byte, error), b []byte) []byte {
	t.Helper()
	z, err := memoCompress(f, b)
	if err != nil {
		t.Fatal(err)
	}
	return z
}

// memoCompress returns f(b), computed once per compressor and content for
// the whole package: the tests compress some disks alike, and xz is slow,
// very slow under -race.
func memoCompress(f func([]byte) ([]byte, error), b []byte) ([]byte, error) {
	key := fmt.Sprintf("%p %s", f, sumOf(b))
	e, _ := compressMemo.LoadOrStore(key, &memoEntry{})
	m := e.(*memoEntry)
	m.once.Do(func() { m.b, m.err = f(b) })
	return m.b, m.err
}

var compressMemo sync.Map // "func content-sha256" → *memoEntry

type memoEntry struct {
	once sync.Once
	b    []byte
	err  error
}

func haveBzip2() bool { return fileExists(bzip2Path) }

func compressorNamed(label string) compressor {
	for _, c := range compressors {
		if c.label == label {
			return c
		}
	}
	panic("no compressor " + label)
}

// compressor is one way of serving a disk.
type compressor struct {
	label       string // in test names and the table
	compression string // what the result must say
	compress    func([]byte) ([]byte, error)
}

var compressors = []compressor{
	{"none", "none", func(b []byte) ([]byte, error) { return b, nil }},
	{"gzip", "gzip", gzipOf},
	{"xz", "xz", xzOf},
	{"zstd-fcs", "zstd", zstdFCSOf},
	{"zstd-stream", "zstd", zstdStreamOf},
	{"bzip2", "bzip2", bzip2Of},
}

// ---------------------------------------------------------------------------
// Disks.

func readAllAt(t testing.TB, d io.ReaderAt, size int64) []byte {
	b, err := io.ReadAll(io.NewSectionReader(d, 0, size))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// formatDisk is a disk in one format, as the layer must hold it.
type formatDisk struct {
	format   string
	diskName string
	disk     []byte
	// virtualSize of a qcow2 image; 0 for the other formats.
	virtualSize uint64
}

func formatDisks(t *testing.T) []formatDisk {
	guest := readAllAt(t, testdisk.New(formatsGuestSize), formatsGuestSize)
	img, err := qcow2test.Image(guest, qcow2test.Compressed())
	if err != nil {
		t.Fatal(err)
	}
	return []formatDisk{
		{format: "raw", diskName: "disk.img", disk: readAllAt(t, testdisk.New(formatsRawSize), formatsRawSize)},
		{format: "qcow2", diskName: "disk.qcow2", disk: img, virtualSize: formatsGuestSize},
		{format: "iso", diskName: "disk.iso", disk: makeISO()},
	}
}

// parallelMap returns f of each of in, computed concurrently.
func parallelMap[T, U any](in []T, f func(T) U) []U {
	out := make([]U, len(in))
	var wg sync.WaitGroup
	for i, v := range in {
		wg.Go(func() { out[i] = f(v) })
	}
	wg.Wait()
	return out
}

// ---------------------------------------------------------------------------
// Checks.

func sumOf(b []byte) string { return sha256Of(bytes.NewReader(b), int64(len(b))) }

// pulled is what the registry holds for an import.
type pulled struct {
	path        string
	disk        []byte
	annotations map[string]string
}

// pullDisk pulls the image res names and returns its disk. It checks that
// the layer blob has the digest and size the result gives and that the
// layer holds disk/ and one file in it.
func pullDisk(t *testing.T, res *result) pulled {
	t.Helper()
	ref, err := name.ParseReference(res.Reference)
	if err != nil {
		t.Fatalf("reference %q: %v", res.Reference, err)
	}
	img, err := remote.Image(ref, remoteOpts(t, reg)...)
	if err != nil {
		t.Fatalf("pulling %s: %v", ref, err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("image has %d layers (%v), want 1", len(layers), err)
	}
	rc, err := layers[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	blob, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("reading the layer: %v", err)
	}
	if got := sumOf(blob); got != res.LayerDigest || int64(len(blob)) != res.LayerSize {
		t.Errorf("layer blob %s (%d bytes), result %s (%d bytes)", got, len(blob), res.LayerDigest, res.LayerSize)
	}
	tr := tar.NewReader(bytes.NewReader(blob))
	if h, err := tr.Next(); err != nil || h.Name != diskDirInTar || h.Typeflag != tar.TypeDir {
		t.Fatalf("first tar entry %+v, %v; want the directory %s", h, err, diskDirInTar)
	}
	h, err := tr.Next()
	if err != nil || h.Typeflag != tar.TypeReg {
		t.Fatalf("second tar entry %+v, %v; want the disk", h, err)
	}
	disk, err := io.ReadAll(tr)
	if err != nil {
		t.Fatalf("reading the disk from the layer: %v", err)
	}
	if h.Size != int64(len(disk)) || h.Uid != diskOwnerID || h.Mode != diskFileMode {
		t.Errorf("disk entry size %d uid %d mode %#o; read %d bytes", h.Size, h.Uid, h.Mode, len(disk))
	}
	if h, err := tr.Next(); err != io.EOF {
		t.Errorf("after the disk: entry %+v, %v; want the end", h, err)
	}
	return pulled{path: h.Name, disk: disk, annotations: m.Annotations}
}

// expect is what a successful import must report and have written.
type expect struct {
	format, compression, sizeFrom, diskName string
	disk                                    []byte // the disk as the layer must hold it
	source                                  []byte // the bytes served; nil when never read whole
	qcow2                                   *importer.QCOW2Info
}

// checkImported checks the result of an import against e, pulls the image
// back and compares its disk byte for byte.
func checkImported(t *testing.T, res *result, e expect) {
	t.Helper()
	diskPath := diskDirInTar + e.diskName
	if res.Format != e.format || res.Compression != e.compression || res.SizeFrom != e.sizeFrom || res.DiskPath != diskPath {
		t.Errorf("format/compression/size_from/disk_path = %s/%s/%s/%s, want %s/%s/%s/%s",
			res.Format, res.Compression, res.SizeFrom, res.DiskPath, e.format, e.compression, e.sizeFrom, diskPath)
	}
	if res.Size != int64(len(e.disk)) {
		t.Errorf("size = %d, want %d", res.Size, len(e.disk))
	}
	diskSum, sourceSum := sumOf(e.disk), ""
	if e.source != nil {
		sourceSum = sumOf(e.source)
	}
	if res.DiskSHA256 != diskSum || res.SourceSHA256 != sourceSum {
		t.Errorf("disk_sha256/source_sha256 = %s/%s, want %s/%s", res.DiskSHA256, res.SourceSHA256, diskSum, sourceSum)
	}
	switch {
	case e.qcow2 == nil && res.QCOW2 != nil:
		t.Errorf("qcow2 = %+v, want none", *res.QCOW2)
	case e.qcow2 != nil && (res.QCOW2 == nil || *res.QCOW2 != *e.qcow2):
		t.Errorf("qcow2 = %+v, want %+v", res.QCOW2, *e.qcow2)
	}

	p := pullDisk(t, res)
	if p.path != diskPath {
		t.Errorf("layer holds %s, want %s", p.path, diskPath)
	}
	if !bytes.Equal(p.disk, e.disk) {
		t.Errorf("the disk pulled back (%d bytes, %s) is not the expected one (%d bytes, %s)",
			len(p.disk), sumOf(p.disk), len(e.disk), diskSum)
	}
	wantAnn := map[string]string{
		importer.AnnotationFormat:            e.format,
		importer.AnnotationSourceCompression: e.compression,
		importer.AnnotationSize:              strconv.Itoa(len(e.disk)),
		importer.AnnotationDiskPath:          diskPath,
		importer.AnnotationDiskSHA256:        diskSum,
	}
	if sourceSum != "" {
		wantAnn[importer.AnnotationSourceSHA256] = sourceSum
	} else if v, ok := p.annotations[importer.AnnotationSourceSHA256]; ok {
		t.Errorf("annotation %s = %q for a source never read whole", importer.AnnotationSourceSHA256, v)
	}
	if e.qcow2 != nil {
		wantAnn[importer.AnnotationVirtualSize] = strconv.FormatUint(e.qcow2.VirtualSize, 10)
		wantAnn[importer.AnnotationQCOW2Version] = strconv.FormatUint(uint64(e.qcow2.Version), 10)
	}
	for k, v := range wantAnn {
		if got, ok := p.annotations[k]; !ok || got != v {
			t.Errorf("annotation %s = %q (present %t), want %q", k, got, ok, v)
		}
	}
}

// checkScratchEmpty checks that the import removed its spool.
func checkScratchEmpty(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("scratch directory not empty after the import: %v", names)
	}
}

// tableRow is one line of the table TestFormats logs.
type tableRow struct {
	format, compression, serve, sizeFrom string
	sourceMB, diskMB, seconds, wall      float64
}

// ---------------------------------------------------------------------------
// Tests.

// TestFormats imports every disk format in every compression, served with
// and without Range and Content-Length, through the binary into the real
// registry, and pulls each disk back.
func TestFormats(t *testing.T) {
	needE2E(t)
	t.Parallel()
	fs := newFormatSource(t)
	disks := formatDisks(t)

	// How each compressed disk is served, and how the importer must then
	// learn the disk's size.
	variants := []struct{ comp, serve, sizeFrom string }{
		{"none", serveRange, importer.SizeFromLength},
		{"none", serveStream, importer.SizeFromSpool},
		{"gzip", serveRange, importer.SizeFromSpool},
		{"xz", serveRange, importer.SizeFromXZIndex},
		{"xz", serveNoRange, importer.SizeFromSpool},
		{"zstd-fcs", serveRange, importer.SizeFromZstdHeader},
		{"zstd-fcs", serveStream, importer.SizeFromZstdHeader}, // the frame header tells, without a length too
		{"zstd-stream", serveRange, importer.SizeFromSpool},
		{"bzip2", serveRange, importer.SizeFromSpool},
	}
	type row struct {
		disk            formatDisk
		comp            compressor
		serve, sizeFrom string
	}
	var rows []row
	for _, d := range disks {
		for _, v := range variants {
			rows = append(rows, row{d, compressorNamed(v.comp), v.serve, v.sizeFrom})
		}
	}

	// Compress each disk once per compressor, concurrently: xz is slow.
	type job struct {
		disk formatDisk
		comp compressor
	}
	var jobs []job
	for _, d := range disks {
		for _, c := range compressors {
			if c.label != "bzip2" || haveBzip2() {
				jobs = append(jobs, job{d, c})
			}
		}
	}
	start := time.Now()
	errs := parallelMap(jobs, func(j job) error {
		_, err := memoCompress(j.comp.compress, j.disk.disk)
		return err
	})
	for i, err := range errs {
		if err != nil {
			t.Fatalf("%s %s: %v", jobs[i].disk.format, jobs[i].comp.label, err)
		}
	}
	t.Logf("compressed %d sources in %v", len(jobs), time.Since(start).Round(time.Millisecond))

	var mu sync.Mutex
	var table []tableRow
	t.Run("imports", func(t *testing.T) {
		for _, r := range rows {
			t.Run(r.disk.format+"/"+r.comp.label+"/"+r.serve, func(t *testing.T) {
				if r.comp.label == "bzip2" && !haveBzip2() {
					t.Skip(bzip2Path + " not found")
				}
				t.Parallel()
				data := compressT(t, r.comp.compress, r.disk.disk) // from the memo
				fileName := strings.ReplaceAll(t.Name(), "/", "_")
				url := fs.add(fileName, data, r.serve)
				scratch := t.TempDir()
				dest := reg.Addr + "/" + newRepo(t) + ":v1"
				run := runImport(t, childEnv(t, credsEnv(reg)...), importArgs(reg, url, dest, "--scratch-dir", scratch, "--disk-sha256")...)
				res := parseSuccess(t, run)
				checkScratchEmpty(t, scratch)
				e := expect{
					format: r.disk.format, compression: r.comp.compression, sizeFrom: r.sizeFrom,
					diskName: r.disk.diskName, disk: r.disk.disk, source: data,
				}
				if r.disk.virtualSize != 0 {
					e.qcow2 = &importer.QCOW2Info{Version: 3, VirtualSize: r.disk.virtualSize, ClusterSize: 64 << 10, CompressionType: "zlib"}
				}
				checkImported(t, res, e)
				if r.comp.label == "none" {
					// Not compressed: the harness's own check fits too.
					verify(t, res, want{dest: dest, source: url, sha256: sumOf(data), size: int64(len(data)),
						format: r.disk.format, diskName: r.disk.diskName, hashed: true})
				}
				mu.Lock()
				table = append(table, tableRow{
					format: r.disk.format, compression: r.comp.label, serve: r.serve, sizeFrom: res.SizeFrom,
					sourceMB: float64(len(data)) / 1e6, diskMB: float64(res.Size) / 1e6,
					seconds: res.Seconds, wall: run.took.Seconds(),
				})
				mu.Unlock()
			})
		}
	})

	// The table, in the order of the rows.
	var b strings.Builder
	fmt.Fprintf(&b, "\n%-6s %-12s %-8s %-15s %9s %8s %8s %8s\n", "format", "compression", "serve", "size_from", "source MB", "disk MB", "import s", "wall s")
	for _, r := range rows {
		for _, tr := range table {
			if tr.format == r.disk.format && tr.compression == r.comp.label && tr.serve == r.serve {
				fmt.Fprintf(&b, "%-6s %-12s %-8s %-15s %9.2f %8.2f %8.2f %8.2f\n",
					tr.format, tr.compression, tr.serve, tr.sizeFrom, tr.sourceMB, tr.diskMB, tr.seconds, tr.wall)
			}
		}
	}
	t.Logf("%d imports (in parallel, GOMAXPROCS %d):%s", len(table), runtime.GOMAXPROCS(0), b.String())
}

// TestConvertRaw imports qcow2 images with --convert raw: the layer must
// hold the guest disk, read at random through Range requests or from the
// spool.
func TestConvertRaw(t *testing.T) {
	needE2E(t)
	t.Parallel()
	fs := newFormatSource(t)
	guest := readAllAt(t, testdisk.New(formatsGuestSize), formatsGuestSize)
	v3, err := qcow2test.Image(guest, qcow2test.Compressed())
	if err != nil {
		t.Fatal(err)
	}
	v2, err := qcow2test.Image(guest, qcow2test.V2(), qcow2test.ClusterBits(14))
	if err != nil {
		t.Fatal(err)
	}
	v3Info := &importer.QCOW2Info{Version: 3, VirtualSize: formatsGuestSize, ClusterSize: 64 << 10, CompressionType: "zlib"}
	v2Info := &importer.QCOW2Info{Version: 2, VirtualSize: formatsGuestSize, ClusterSize: 16 << 10, CompressionType: "zlib"}

	cases := []struct {
		name        string
		data        []byte
		serve       string
		compression string
		info        *importer.QCOW2Info
		args        []string
		// rangeRead: converted through Range requests, so the source is
		// never read whole and has no sha256.
		rangeRead bool
	}{
		{name: "v3 gzip (spooled)", data: compressT(t, gzipOf, v3), serve: serveRange, compression: "gzip", info: v3Info},
		{name: "v3 zstd without its size (spooled)", data: compressT(t, zstdStreamOf, v3), serve: serveRange, compression: "zstd", info: v3Info},
		{name: "v2 16 KiB clusters without length (spooled)", data: v2, serve: serveStream, compression: "none", info: v2Info},
		{name: "v2 without length and --source-sha256 of the image", data: v2, serve: serveStream, compression: "none", info: v2Info,
			args: []string{"--source-sha256", strings.TrimPrefix(sumOf(v2), "sha256:")}},
		{name: "v3 with Range", data: v3, serve: serveRange, compression: "none", info: v3Info, rangeRead: true},
		{name: "v3 xz with Range", data: compressT(t, xzOf, v3), serve: serveRange, compression: "xz", info: v3Info},
		{name: "v3 zstd with its size, with Range", data: compressT(t, zstdFCSOf, v3), serve: serveRange, compression: "zstd", info: v3Info},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			url := fs.add(strings.ReplaceAll(t.Name(), "/", "_"), c.data, c.serve)
			scratch := t.TempDir()
			repo := newRepo(t)
			dest := reg.Addr + "/" + repo + ":v1"
			args := importArgs(reg, url, dest, append([]string{"--convert", "raw", "--scratch-dir", scratch, "--disk-sha256"}, c.args...)...)
			run := runImport(t, childEnv(t, credsEnv(reg)...), args...)
			checkScratchEmpty(t, scratch)
			res := parseSuccess(t, run)
			source := c.data
			if c.rangeRead {
				source = nil
			}
			checkImported(t, res, expect{
				format: "raw", compression: c.compression, sizeFrom: importer.SizeFromQCOW2,
				diskName: "disk.img", disk: guest, source: source, qcow2: c.info,
			})
			t.Logf("converted %d-byte %s qcow2 to a %d-byte raw disk in %.2fs", len(c.data), c.compression, res.Size, res.Seconds)
		})
	}
}

// TestBadDisks imports hostile and broken sources: each must fail with its
// reason, tag nothing and leave the scratch directory empty; the few that
// are valid after all must import as what they are.
func TestBadDisks(t *testing.T) {
	needE2E(t)
	t.Parallel()
	fs := newFormatSource(t)

	rng := rand.New(rand.NewPCG(7, 11))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	raw1M := readAllAt(t, testdisk.New(1<<20), 1<<20)
	guest := readAllAt(t, testdisk.New(1<<20), 1<<20)
	image := func(opts ...qcow2test.Option) []byte {
		img, err := qcow2test.Image(guest, opts...)
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	good := image()
	backing := image(qcow2test.WithBackingFile("/etc/hostname"))
	huge := image(qcow2test.ClusterBits(19), qcow2test.WithVirtualSize(1<<50))
	sparse := image(qcow2test.WithVirtualSize(64 << 20)) // 1 MiB file, 64 MiB disk

	// The qcow2 magic and version 3, then a few bytes of garbage.
	shortGarbage := append([]byte("QFI\xfb\x00\x00\x00\x03"), random(60)...)
	// A valid image whose layout fields (cluster_bits, size, the table
	// offsets and sizes) are garbage; no backing file, no encryption.
	garbage := bytes.Clone(good)
	copy(garbage[qcow2test.OffClusterBits:qcow2test.OffCryptMethod], random(12))
	copy(garbage[qcow2test.OffL1Size:qcow2test.OffIncompatible], random(36))

	gz := compressT(t, gzipOf, raw1M)
	truncatedGzip := gz[:len(gz)/2]
	corruptXZ := bytes.Clone(compressT(t, xzOf, raw1M)) // the memo keeps the original
	for i := len(corruptXZ) / 3; i < len(corruptXZ)/3+64; i++ {
		corruptXZ[i] ^= 0x55
	}
	randomDisk := random(1 << 20)
	if bytes.HasPrefix(randomDisk, []byte{0x1f, 0x8b}) {
		t.Fatal("the random disk starts like gzip: pick another seed")
	}
	wrongMagic := image(qcow2test.WithMagic("QFI\xfa"))
	raw8 := readAllAt(t, testdisk.New(rawSize), rawSize)
	gzRaw8 := compressT(t, gzipOf, raw8)
	sha := func(b []byte) string { return strings.TrimPrefix(sumOf(b), "sha256:") }
	md5Hex := func(b []byte) string { s := md5.Sum(b); return hex.EncodeToString(s[:]) }
	wrongSHA := sha256.Sum256([]byte("another file"))

	type tc struct {
		name  string
		data  []byte
		serve string // "" is serveRange
		args  []string
		// reason is the expected failure; "" expects success, checked by
		// success.
		reason  string
		msg     string // in the last stderr line
		success func(t *testing.T, res *result)
		// knownBug and bugShows are as in TestConvertRaw.
		knownBug string
		bugShows func(r *run) bool
	}
	rawOK := func(data []byte, compression, sizeFrom string, disk []byte) func(*testing.T, *result) {
		return func(t *testing.T, res *result) {
			checkImported(t, res, expect{format: "raw", compression: compression, sizeFrom: sizeFrom,
				diskName: "disk.img", disk: disk, source: data})
		}
	}
	cases := []tc{
		// qcow2 images that would make their consumer read the host.
		{name: "qcow2 with backing file /etc/hostname", data: backing, reason: "BackingFileRejected", msg: `"/etc/hostname"`},
		{name: "gzipped qcow2 with backing file", data: compressT(t, gzipOf, backing), reason: "BackingFileRejected", msg: `"/etc/hostname"`},
		{name: "qcow2 with backing file, --convert raw", data: backing, args: []string{"--convert", "raw"}, reason: "BackingFileRejected", msg: "/etc/hostname"},
		{name: "qcow2 with backing format extension", data: image(qcow2test.WithExtension(qcow2test.ExtBackingFormat, []byte("raw"))), reason: "BackingFileRejected"},
		{name: "qcow2 with the data-file bit", data: image(qcow2test.WithDataFileBit()), reason: "BackingFileRejected", msg: "external data file"},
		{name: "qcow2 with a data file extension", data: image(qcow2test.WithExtension(qcow2test.ExtDataFile, []byte("/dev/sda"))), reason: "BackingFileRejected", msg: "/dev/sda"},
		// Broken or unsupported qcow2 images.
		{name: "qcow2 version 4", data: image(qcow2test.WithVersion(4)), reason: "UnsupportedFormat", msg: "version 4"},
		{name: "qcow2 magic with a short garbage header", data: shortGarbage, reason: "CorruptSource", msg: "truncated"},
		{name: "qcow2 with garbage layout fields", data: garbage, reason: "CorruptSource", msg: "cluster_bits"},
		{name: "qcow2 truncated before its tables", data: image(qcow2test.Truncated(100 << 10)), reason: "CorruptSource", msg: "past the end"},
		{name: "gzipped qcow2 truncated before its tables", data: compressT(t, gzipOf, image(qcow2test.Truncated(100<<10))), reason: "CorruptSource", msg: "past the end"},
		{name: "qcow2 truncated within its data, --convert raw (spooled)", data: compressT(t, gzipOf, image(qcow2test.Truncated(int64(len(good)/2)))),
			args: []string{"--convert", "raw"}, reason: "CorruptSource", msg: "corrupt qcow2 image"},
		{name: "qcow2 truncated within its data", data: image(qcow2test.Truncated(int64(len(good) / 2))), reason: "CorruptSource",
			knownBug: "limitation: a qcow2 cut within its L2 tables or data clusters is imported as a qcow2; only the tables the header points to are checked against the file's length (stored as qcow2, it is never read at random)",
			bugShows: func(r *run) bool { return r.code == 0 }},
		{name: "qcow2 claiming 1 PiB, --max-virtual-size 1 GiB", data: huge, args: []string{"--max-virtual-size", "1073741824"},
			reason: "TooLarge", msg: "1125899906842624"},
		{name: "qcow2 claiming 1 PiB, default limit", data: huge, reason: "TooLarge", msg: "virtual size"},
		{name: "gzipped qcow2 claiming 1 PiB", data: compressT(t, gzipOf, huge), reason: "TooLarge", msg: "virtual size"},
		{name: "--convert raw of a small file over --max-size", data: sparse, args: []string{"--convert", "raw", "--max-size", "1048576"},
			reason: "TooLarge", msg: "virtual size"},
		// Broken compression.
		{name: "truncated gzip", data: truncatedGzip, reason: "CorruptSource"},
		{name: "corrupt xz", data: corruptXZ, reason: "CorruptSource"},
		{name: "corrupt xz without Range", data: corruptXZ, serve: serveNoRange, reason: "CorruptSource"},
		{name: "gzip inside gzip", data: compressT(t, gzipOf, gz), reason: "UnsupportedFormat", msg: "nested"},
		{name: "vmdk", data: append([]byte("KDMV"), make([]byte, 64<<10)...), reason: "UnsupportedFormat", msg: "vmdk"},
		// Size limits.
		{name: "gzip decompressing past --max-size", data: gzRaw8, args: []string{"--max-size", "4194304"}, reason: "TooLarge"},
		{name: "zstd whose header is over --max-size", data: compressT(t, zstdFCSOf, raw8), args: []string{"--max-size", "4194304"}, reason: "TooLarge"},
		{name: "raw over --max-size", data: raw8, args: []string{"--max-size", "4194304"}, reason: "TooLarge"},
		// Format and checksum assertions.
		{name: "--format qcow2 on a raw disk", data: raw1M, args: []string{"--format", "qcow2"}, reason: "FormatMismatch"},
		{name: "--format raw on a gzipped qcow2", data: compressT(t, gzipOf, good), args: []string{"--format", "raw"}, reason: "FormatMismatch"},
		{name: "wrong --source-sha256", data: raw1M, args: []string{"--source-sha256", hex.EncodeToString(wrongSHA[:])}, reason: "ChecksumMismatch"},
		{name: "wrong --source-md5 on a spooled gzip", data: gz, args: []string{"--source-md5", md5Hex(raw1M)}, reason: "ChecksumMismatch"},
		// Valid after all.
		{name: "random bytes are a raw disk", data: randomDisk, success: rawOK(randomDisk, "none", importer.SizeFromLength, randomDisk)},
		{name: "qcow2 with a wrong magic is a raw disk", data: wrongMagic, success: rawOK(wrongMagic, "none", importer.SizeFromLength, wrongMagic)},
		{name: "right --source-md5 and --source-sha256", data: gz, args: []string{"--source-md5", md5Hex(gz), "--source-sha256", sha(gz)},
			success: rawOK(gz, "gzip", importer.SizeFromSpool, raw1M)},
		{name: "right --source-md5 and --source-sha256, not compressed", data: raw1M, args: []string{"--source-md5", md5Hex(raw1M), "--source-sha256", sha(raw1M)},
			success: rawOK(raw1M, "none", importer.SizeFromLength, raw1M)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			serve := c.serve
			if serve == "" {
				serve = serveRange
			}
			url := fs.add(strings.ReplaceAll(t.Name(), "/", "_"), c.data, serve)
			scratch := t.TempDir()
			repo := newRepo(t)
			dest := reg.Addr + "/" + repo + ":v1"
			args := importArgs(reg, url, dest, append([]string{"--scratch-dir", scratch, "--disk-sha256"}, c.args...)...)
			run := runImport(t, childEnv(t, credsEnv(reg)...), args...)
			checkScratchEmpty(t, scratch)
			if c.knownBug != "" && c.bugShows(run) {
				t.Skipf("KNOWN BUG: %s\n%s", c.knownBug, run)
			}
			if c.reason == "" {
				c.success(t, parseSuccess(t, run))
				return
			}
			checkFailure(t, run, c.reason)
			if last := lastLine(run.stderr); !strings.Contains(last, c.msg) {
				t.Errorf("last stderr line %q does not mention %q", last, c.msg)
			}
			if list, found := tags(t, reg, repo); found && len(list) > 0 {
				t.Errorf("failed import left tags %v in %s", list, repo)
			}
			t.Logf("%s", lastLine(run.stderr))
			if c.knownBug != "" && !t.Failed() {
				t.Errorf("known bug %q no longer shows: remove the note", c.knownBug)
			}
		})
	}
}
