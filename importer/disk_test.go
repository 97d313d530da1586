package importer_test

import (
	"archive/tar"
	"bytes"
	"crypto/md5"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/detect"
	"github.com/diskimporter/diskimporter/importer/reason"
)

// compressed returns data in the container c. zstd frames carry their
// content size unless streamed is set.
func compressed(t *testing.T, c detect.Compression, data []byte, streamed bool) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	switch c {
	case detect.None:
		return data
	case detect.Gzip:
		w = gzip.NewWriter(&buf)
	case detect.XZ:
		w, err = xz.NewWriter(&buf)
	case detect.Zstd:
		if !streamed {
			enc, _ := zstd.NewWriter(nil)
			defer enc.Close()
			return enc.EncodeAll(data, nil)
		}
		w, err = zstd.NewWriter(&buf)
	default:
		t.Fatalf("no compressor for %s", c)
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// serveNoRange serves data without Accept-Ranges and, when chunked, without
// a length.
func serveNoRange(data []byte, chunked bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !chunked {
			w.Header().Set("Content-Length", fmt.Sprint(len(data)))
		}
		w.Write(data)
	}
}

// pulledDisk pulls the image an import wrote and returns the disk in it.
func pulledDisk(t *testing.T, reg *testRegistry, res *importer.Result) []byte {
	t.Helper()
	ref, err := name.ParseReference(res.Reference)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(ref, remote.WithContext(t.Context()), remote.WithTransport(reg.clientTransport()))
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%d layers, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("no disk in the layer: %v", err)
		}
		if h.Name == res.DiskPath {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
}

// TestFormatsAndCompressions imports each disk format in each compression
// and checks what was stored and how its size was learned.
func TestFormatsAndCompressions(t *testing.T) {
	raw := diskBytes(t, 3<<20+512)
	iso := withISOSignature(diskBytes(t, 1<<20))
	for _, tc := range []struct {
		name        string
		disk        []byte
		c           detect.Compression
		serve       func([]byte) http.HandlerFunc
		streamed    bool
		format      string
		compression string
		sizeFrom    string
	}{
		{"raw", raw, detect.None, rangeServer, false, "raw", "none", importer.SizeFromLength},
		{"raw without length", raw, detect.None, chunked, false, "raw", "none", importer.SizeFromSpool},
		{"raw.gz", raw, detect.Gzip, rangeServer, false, "raw", "gzip", importer.SizeFromSpool},
		{"raw.xz with ranges", raw, detect.XZ, rangeServer, false, "raw", "xz", importer.SizeFromXZIndex},
		{"raw.xz without ranges", raw, detect.XZ, plainServer, false, "raw", "xz", importer.SizeFromSpool},
		{"raw.zst with size", raw, detect.Zstd, plainServer, false, "raw", "zstd", importer.SizeFromZstdHeader},
		{"raw.zst streamed", raw, detect.Zstd, plainServer, true, "raw", "zstd", importer.SizeFromSpool},
		{"iso", iso, detect.None, rangeServer, false, "iso", "none", importer.SizeFromLength},
		{"iso.gz", iso, detect.Gzip, plainServer, false, "iso", "gzip", importer.SizeFromSpool},
		{"iso.xz", iso, detect.XZ, rangeServer, false, "iso", "xz", importer.SizeFromXZIndex},
		{"iso.zst", iso, detect.Zstd, plainServer, false, "iso", "zstd", importer.SizeFromZstdHeader},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			body := compressed(t, tc.c, tc.disk, tc.streamed)
			reg := newTestRegistry(t)
			src := newTestSource(t, tc.serve(body))
			scratch := t.TempDir()
			o := baseOptions(reg, src.url)
			o.ScratchDir = scratch
			res, err := importer.Run(testContext(t), o)
			if err != nil {
				t.Fatal(err)
			}
			if res.Format != tc.format || res.Compression != tc.compression || res.SizeFrom != tc.sizeFrom {
				t.Errorf("format %s, compression %s, size from %s; want %s, %s, %s",
					res.Format, res.Compression, res.SizeFrom, tc.format, tc.compression, tc.sizeFrom)
			}
			if res.Size != int64(len(tc.disk)) {
				t.Errorf("size %d, want %d", res.Size, len(tc.disk))
			}
			if want := fmt.Sprintf("sha256:%x", sha256.Sum256(tc.disk)); res.DiskSHA256 != want {
				t.Errorf("disk sha256 %s, want %s", res.DiskSHA256, want)
			}
			if want := fmt.Sprintf("sha256:%x", sha256.Sum256(body)); res.SourceSHA256 != want {
				t.Errorf("source sha256 %s, want %s (of the bytes as downloaded)", res.SourceSHA256, want)
			}
			if got := pulledDisk(t, reg, res); !bytes.Equal(got, tc.disk) {
				t.Error("the disk pulled back differs from the decompressed source")
			}
			assertEmptyDir(t, scratch)
		})
	}
}

func rangeServer(b []byte) http.HandlerFunc { return serveBytes(b, `"v1"`) }
func plainServer(b []byte) http.HandlerFunc { return serveNoRange(b, false) }

func assertEmptyDir(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("left behind in the scratch directory: %s", filepath.Join(dir, e.Name()))
	}
}

// TestBadDisks feeds broken and unwanted disks and checks the error class,
// that nothing was tagged and that no spool was left.
func TestBadDisks(t *testing.T) {
	raw := diskBytes(t, 1<<20)
	gz := compressed(t, detect.Gzip, raw, false)
	xzBody := compressed(t, detect.XZ, raw, false)
	corruptXZ := bytes.Clone(xzBody)
	corruptXZ[len(corruptXZ)/2] ^= 0xff
	sum := fmt.Sprintf("%x", sha256.Sum256(raw))
	wrong := fmt.Sprintf("%x", sha256.Sum256([]byte("other")))
	for _, tc := range []struct {
		name   string
		body   []byte
		serve  func([]byte) http.HandlerFunc
		modify func(*importer.Options)
		want   error
		reason reason.Reason
	}{
		{name: "truncated gzip", body: gz[:len(gz)/2], serve: plainServer, want: importer.ErrCorruptSource, reason: "CorruptSource"},
		{name: "corrupt xz", body: corruptXZ, serve: plainServer, want: importer.ErrCorruptSource, reason: "CorruptSource"},
		{name: "gzip inside gzip", body: compressed(t, detect.Gzip, gz, false), serve: plainServer, want: importer.ErrUnsupportedFormat, reason: "UnsupportedFormat"},
		{name: "vmdk", body: append([]byte("KDMV"), raw...), serve: rangeServer, want: importer.ErrUnsupportedFormat, reason: "UnsupportedFormat"},
		{name: "format mismatch", body: raw, serve: rangeServer, want: importer.ErrFormatMismatch, reason: "FormatMismatch",
			modify: func(o *importer.Options) { o.Format = "qcow2" }},
		{name: "sha256 mismatch", body: raw, serve: rangeServer, want: importer.ErrChecksumMismatch, reason: "ChecksumMismatch",
			modify: func(o *importer.Options) { o.Checksums = []importer.Checksum{{Algorithm: "sha256", Hex: wrong}} }},
		{name: "md5 mismatch with a good sha256", body: raw, serve: rangeServer, want: importer.ErrChecksumMismatch, reason: "ChecksumMismatch",
			modify: func(o *importer.Options) {
				o.Checksums = []importer.Checksum{{Algorithm: "sha256", Hex: sum}, {Algorithm: "md5", Hex: fmt.Sprintf("%x", md5.Sum(nil))}}
			}},
		{name: "sha256 of the decompressed disk given for a gz", body: gz, serve: plainServer, want: importer.ErrChecksumMismatch, reason: "ChecksumMismatch",
			modify: func(o *importer.Options) { o.Checksums = []importer.Checksum{{Algorithm: "sha256", Hex: sum}} }},
		{name: "sha256 mismatch without DiskSHA256", body: raw, serve: rangeServer, want: importer.ErrChecksumMismatch, reason: "ChecksumMismatch",
			modify: func(o *importer.Options) {
				o.DiskSHA256, o.Checksums = false, []importer.Checksum{{Algorithm: "sha256", Hex: wrong}}
			}},
		{name: "sha256 of the decompressed disk given for a gz, without DiskSHA256", body: gz, serve: plainServer, want: importer.ErrChecksumMismatch, reason: "ChecksumMismatch",
			modify: func(o *importer.Options) {
				o.DiskSHA256, o.Checksums = false, []importer.Checksum{{Algorithm: "sha256", Hex: sum}}
			}},
		{name: "over --max-size, known size", body: raw, serve: rangeServer, want: importer.ErrTooLarge, reason: "TooLarge",
			modify: func(o *importer.Options) { o.MaxSize = 1000 }},
		{name: "gzip bomb over --max-size", body: gz, serve: plainServer, want: importer.ErrTooLarge, reason: "TooLarge",
			modify: func(o *importer.Options) { o.MaxSize = 100000 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := newTestRegistry(t)
			src := newTestSource(t, tc.serve(tc.body))
			scratch := t.TempDir()
			o := baseOptions(reg, src.url)
			o.ScratchDir = scratch
			if tc.modify != nil {
				tc.modify(&o)
			}
			_, err := importer.Run(testContext(t), o)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Run error %v, want %v", err, tc.want)
			}
			if got := reason.Of(err); got != tc.reason {
				t.Errorf("Reason %s, want %s (%v)", got, tc.reason, err)
			}
			reg.assertNoTag(t)
			assertEmptyDir(t, scratch)
		})
	}
}

// TestGoodChecksums verifies several checksums at once, of a plain and a
// compressed source as downloaded, with and without DiskSHA256: the sha256
// checked is the one reported.
func TestGoodChecksums(t *testing.T) {
	raw := diskBytes(t, 1<<20)
	gz := compressed(t, detect.Gzip, raw, false)
	for _, body := range [][]byte{raw, gz} {
		for _, diskSHA256 := range []bool{true, false} {
			reg := newTestRegistry(t)
			src := newTestSource(t, serveBytes(body, `"v1"`))
			o := baseOptions(reg, src.url)
			o.ScratchDir = t.TempDir()
			o.DiskSHA256 = diskSHA256
			wantSHA := fmt.Sprintf("sha256:%x", sha256.Sum256(body))
			for _, s := range []string{wantSHA, fmt.Sprintf("MD5:%X", md5.Sum(body))} {
				c, err := importer.ParseChecksum(s)
				if err != nil {
					t.Fatal(err)
				}
				o.Checksums = append(o.Checksums, c)
			}
			res, err := importer.Run(testContext(t), o)
			if err != nil {
				t.Fatal(err)
			}
			if res.SourceSHA256 != wantSHA {
				t.Errorf("DiskSHA256 %v: source sha256 %q, want %q", diskSHA256, res.SourceSHA256, wantSHA)
			}
			if wantDisk := fmt.Sprintf("sha256:%x", sha256.Sum256(raw)); diskSHA256 && res.DiskSHA256 != wantDisk {
				t.Errorf("disk sha256 %q, want %q", res.DiskSHA256, wantDisk)
			}
		}
	}
}

func TestParseChecksum(t *testing.T) {
	for _, bad := range []string{"", "sha256", "sha256:abc", "crc32:00000000", "md5:" + string(bytes.Repeat([]byte("g"), 32))} {
		if _, err := importer.ParseChecksum(bad); !errors.Is(err, importer.ErrInvalidOptions) {
			t.Errorf("ParseChecksum(%q) = %v, want ErrInvalidOptions", bad, err)
		}
	}
}
