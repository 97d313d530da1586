package qcow2

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

type runtimeMem struct{ totalAlloc uint64 }

func (m *runtimeMem) read() {
	var s runtime.MemStats
	runtime.ReadMemStats(&s)
	m.totalAlloc = s.TotalAlloc
}

func TestOpenReadsGuestDisk(t *testing.T) {
	tests := []struct {
		name string
		img  testImage
	}{
		{"v3 stored, compressed, zero and unallocated clusters", standardImage()},
		{"the fuzzer's seed", smallImage()},
		{"v2", testImage{version: 2, virtualSize: 256 << 10, data: map[int64][]byte{1: pattern(3, 64<<10), 2: pattern(4, 64<<10)}}},
		{"512 B clusters over several L2 tables", testImage{clusterBits: 9, virtualSize: 100 << 10, data: map[int64][]byte{
			0: pattern(5, 512), 63: pattern(6, 512), 64: pattern(7, 512), 150: pattern(8, 300), 199: pattern(9, 512),
		}, compressed: map[int64][]byte{65: text(512), 66: text(512)}}},
		{"2 MiB clusters", testImage{clusterBits: 21, virtualSize: 5 << 20, data: map[int64][]byte{1: pattern(10, 2<<20)}, compressed: map[int64][]byte{0: text(2 << 20)}}},
		{"extended L2", testImage{clusterBits: 14, virtualSize: 1 << 20, extendedL2: true, data: map[int64][]byte{
			0: pattern(11, 16<<10), 7: pattern(12, 16<<10),
		}, compressed: map[int64][]byte{2: text(16 << 10)}, zero: []int64{3}}},
		{"extended L2, some subclusters unallocated", testImage{clusterBits: 16, virtualSize: 1 << 20, extendedL2: true, data: map[int64][]byte{
			1: pattern(15, 64<<10), 2: pattern(16, 64<<10), 9: pattern(17, 64<<10),
		}, subclusters: map[int64]uint32{1: 0x0000FFFF, 2: 0xA5A5A5A5, 9: 0x80000001}}},
		{"virtual size not a multiple of the cluster", testImage{virtualSize: 200<<10 + 123, data: map[int64][]byte{3: pattern(13, 8<<10+123)}}},
		{"all clusters compressed back to back", testImage{clusterBits: 12, virtualSize: 64 << 10, compressed: map[int64][]byte{
			0: text(4 << 10), 1: text(4 << 10), 2: pattern(14, 1<<10), 3: text(4 << 10),
		}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, _ := tt.img.build(t)
			want := tt.img.guest()
			info, disk, err := Open(bytes.NewReader(img), int64(len(img)), 0)
			if err != nil {
				t.Fatal(err)
			}
			if info.VirtualSize != uint64(len(want)) {
				t.Fatalf("VirtualSize %d, want %d", info.VirtualSize, len(want))
			}
			// One read of the whole disk: go-qcow2reader alone stops with
			// io.EOF where a compressed cluster ends.
			got := make([]byte, len(want)+100)
			n, err := disk.ReadAt(got, 0)
			if n != len(want) || err != io.EOF {
				t.Fatalf("ReadAt(whole disk + 100) = %d, %v; want %d, EOF", n, err, len(want))
			}
			if !bytes.Equal(got[:n], want) {
				t.Fatalf("whole disk differs at byte %d", firstDiff(got[:n], want))
			}
			// A copy in small odd pieces, as io.Copy through a SectionReader.
			var buf bytes.Buffer
			if _, err := io.CopyBuffer(&buf, io.NewSectionReader(disk, 0, int64(len(want))), make([]byte, 3000)); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf.Bytes(), want) {
				t.Fatalf("copied disk differs at byte %d", firstDiff(buf.Bytes(), want))
			}
			checkEdges(t, disk, int64(len(want)))
		})
	}
}

func checkEdges(t *testing.T, disk io.ReaderAt, size int64) {
	t.Helper()
	p := make([]byte, 10)
	if n, err := disk.ReadAt(p, size); n != 0 || err != io.EOF {
		t.Errorf("ReadAt(end) = %d, %v; want 0, EOF", n, err)
	}
	if n, err := disk.ReadAt(p, size+1<<40); n != 0 || err != io.EOF {
		t.Errorf("ReadAt(far past the end) = %d, %v; want 0, EOF", n, err)
	}
	if n, err := disk.ReadAt(p, size-4); n != 4 || err != io.EOF {
		t.Errorf("ReadAt(last 4 bytes) = %d, %v; want 4, EOF", n, err)
	}
	if _, err := disk.ReadAt(p, -1); err == nil || err == io.EOF {
		t.Errorf("ReadAt(-1) = %v; want an error", err)
	}
	if n, err := disk.ReadAt(nil, 0); n != 0 || err != nil {
		t.Errorf("ReadAt(nil, 0) = %d, %v", n, err)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestOpenEmptyDisk(t *testing.T) {
	img, _ := testImage{virtualSize: 0}.build(t)
	info, disk, err := Open(bytes.NewReader(img), int64(len(img)), 0)
	if err != nil {
		t.Fatal(err)
	}
	if info.VirtualSize != 0 {
		t.Errorf("VirtualSize %d", info.VirtualSize)
	}
	if n, err := disk.ReadAt(make([]byte, 1), 0); n != 0 || err != io.EOF {
		t.Errorf("ReadAt = %d, %v; want 0, EOF", n, err)
	}
}

func TestOpenZstd(t *testing.T) {
	img, _ := standardImage().build(t)
	put64(img, offIncompatible, 1<<3)
	img[offCompressionType] = 1
	info, err := Inspect(img[:HeadSize], int64(len(img)), 0)
	if err != nil {
		t.Fatal(err)
	}
	if info.CompressionType != "zstd" {
		t.Errorf("CompressionType %q", info.CompressionType)
	}
	// go-qcow2reader registers no zstd decompressor.
	if _, _, err := Open(bytes.NewReader(img), int64(len(img)), 0); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "compression_type=zlib") {
		t.Errorf("Open: %v; want ErrUnsupported with a hint", err)
	}
}

// TestOpenCorruptData checks that guest data the image maps past the end
// of its file is an error wrapping ErrCorrupt, not the end of the disk.
func TestOpenCorruptData(t *testing.T) {
	tests := []struct {
		name  string
		patch func(img []byte, lay layout)
	}{
		{"data cluster past the end of the file", func(img []byte, lay layout) {
			l2 := int64(getU64(img, lay.l1Offset) &^ (1 << 63))
			put64(img, int(l2), 1<<63|1<<40)
		}},
		{"L2 table past the end of the file", func(img []byte, lay layout) {
			put64(img, int(lay.l1Offset), 1<<63|1<<40)
		}},
		{"garbage compressed data", func(img []byte, lay layout) {
			host := lay.dataOffset[3]
			copy(img[host:host+lay.clusterSize], pattern(99, int(lay.clusterSize)))
		}},
		{"compressed data that ends early", func(img []byte, lay layout) {
			host := lay.dataOffset[3]
			copy(img[host:host+lay.clusterSize], make([]byte, lay.clusterSize))
			copy(img[host:], deflate(t, text(1000)))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, lay := standardImage().build(t)
			tt.patch(img, lay)
			_, disk, err := Open(bytes.NewReader(img), int64(len(img)), 0)
			if err != nil {
				t.Fatal(err)
			}
			_, err = io.Copy(io.Discard, io.NewSectionReader(disk, 0, 1<<20))
			if !errors.Is(err, ErrCorrupt) || errors.Is(err, io.EOF) {
				t.Errorf("copying the disk: %v; want ErrCorrupt, not io.EOF", err)
			}
		})
	}
}

func getU64(img []byte, off int64) uint64 {
	var v uint64
	for _, b := range img[off : off+8] {
		v = v<<8 | uint64(b)
	}
	return v
}

// TestOpenSourceErrors checks that errors of the image's reader are kept,
// and not taken for corruption.
func TestOpenSourceErrors(t *testing.T) {
	img, lay := standardImage().build(t)
	boom := errors.New("connection reset")

	// The header, the L1 and L2 tables read, the data cluster fails.
	_, disk, err := Open(&failingReader{data: img, failFrom: lay.dataOffset[0], err: boom}, int64(len(img)), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := disk.ReadAt(make([]byte, 10), 0); !errors.Is(err, boom) || errors.Is(err, ErrCorrupt) {
		t.Errorf("ReadAt: %v; want the source's error", err)
	}
	// The L1 table fails.
	if _, _, err := Open(&failingReader{data: img, failFrom: lay.l1Offset, err: boom}, int64(len(img)), 0); err == nil {
		t.Error("Open with a failing L1 table read succeeded")
	}
	// The head fails.
	if _, _, err := Open(&failingReader{data: img, failFrom: 0, err: boom}, int64(len(img)), 0); !errors.Is(err, boom) {
		t.Errorf("Open with a failing head read: %v", err)
	}
	// A file shorter than it was said to be.
	if _, _, err := Open(bytes.NewReader(img[:1000]), int64(len(img)), 0); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("Open of a short file: %v", err)
	}
	if _, _, err := Open(bytes.NewReader(img), -1, 0); err == nil {
		t.Error("Open with an unknown size succeeded")
	}
}

// failingReader fails every read that reaches failFrom.
type failingReader struct {
	data     []byte
	failFrom int64
	err      error
}

func (r *failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > r.failFrom {
		return 0, r.err
	}
	return bytes.NewReader(r.data).ReadAt(p, off)
}

// hostFile writes a file of the host that no disk read may ever return.
func hostFile(t *testing.T, dir string) (path string, marker []byte) {
	t.Helper()
	marker = []byte(fmt.Sprintf("HOST-SECRET-%d-", time.Now().UnixNano()))
	path = filepath.Join(dir, "secret")
	if err := os.WriteFile(path, bytes.Repeat(marker, (1<<20)/len(marker)+1), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, marker
}

// TestOpenNeverReadsHostFiles gives images naming a backing file of the
// host, by absolute and relative name, over an *os.File (which has Name,
// to resolve relative names against) and over a reader that changes the
// header once it has been checked: no read may return the host's bytes.
func TestOpenNeverReadsHostFiles(t *testing.T) {
	dir := t.TempDir()
	secret, marker := hostFile(t, dir)
	clean, _ := standardImage().build(t)

	for _, name := range []string{"/etc/hostname", secret, "secret", "./secret", "../" + filepath.Base(dir) + "/secret"} {
		t.Run("backing file "+name, func(t *testing.T) {
			img := withBackingFile(name)(t, bytes.Clone(clean))
			path := filepath.Join(dir, "image.qcow2")
			if err := os.WriteFile(path, img, 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			for _, ra := range []io.ReaderAt{f, bytes.NewReader(img)} {
				_, disk, err := Open(ra, int64(len(img)), 0)
				if !errors.Is(err, ErrBackingFile) || !strings.Contains(err.Error(), name) || disk != nil {
					t.Fatalf("Open(%T) = %v, %v; want ErrBackingFile naming %q", ra, disk, err, name)
				}
			}
		})
	}

	t.Run("header swapped after the check", func(t *testing.T) {
		hostile := withBackingFile(secret)(t, bytes.Clone(clean))
		ra := &swappingReader{first: clean, then: hostile}
		_, disk, err := Open(ra, int64(len(clean)), 0)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(io.NewSectionReader(disk, 0, 1<<20))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(got, marker) || !bytes.Equal(got, standardImage().guest()) {
			t.Fatal("the disk is not the checked image's")
		}
		if ra.reads.Load() < 2 {
			t.Fatal("the library read nothing past the head")
		}
	})

	// Behind Inspect: even if an image with a backing file reached the
	// library, it could not open a backing image.
	t.Run("library behind Inspect", func(t *testing.T) {
		hostile := withBackingFile(secret)(t, bytes.Clone(clean))
		src := &pinnedReader{head: hostile[:HeadSize], ra: bytes.NewReader(hostile), size: int64(len(hostile))}
		info := &Info{Version: 3, VirtualSize: 1 << 20, ClusterBits: 16, L1Size: 1}
		img, err := openChecked(src, info)
		if !errors.Is(err, ErrBackingFile) || img != nil {
			t.Fatalf("openChecked = %v, %v; want ErrBackingFile", img, err)
		}
	})
}

// swappingReader serves first to the first read and then to every later
// one, as a source could that changes between requests.
type swappingReader struct {
	first, then []byte
	reads       atomic.Int64
}

func (r *swappingReader) ReadAt(p []byte, off int64) (int, error) {
	data := r.then
	if r.reads.Add(1) == 1 {
		data = r.first
	}
	return bytes.NewReader(data).ReadAt(p, off)
}

func TestOpenConcurrentReads(t *testing.T) {
	ti := standardImage()
	img, _ := ti.build(t)
	want := ti.guest()
	_, disk, err := Open(bytes.NewReader(img), int64(len(img)), 0)
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 8)
	for g := range 8 {
		go func() {
			p := make([]byte, 7000)
			for off := int64(g * 1000); off < int64(len(want)); off += 50000 {
				n, err := disk.ReadAt(p, off)
				if err != nil && err != io.EOF {
					errs <- err
					return
				}
				if !bytes.Equal(p[:n], want[off:off+int64(n)]) {
					errs <- fmt.Errorf("offset %d differs", off)
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
