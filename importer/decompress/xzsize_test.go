package decompress

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/ulikunitz/xz"
)

func TestXZSize(t *testing.T) {
	data := disk(t, bigDisk)
	small := disk(t, 1000)
	cat := func(parts ...[]byte) []byte { return slices.Concat(parts...) }
	xzOf := func(t *testing.T, d []byte) []byte { return xzCompress(t, xz.WriterConfig{DictCap: 1 << 20}, d) }
	// Records of junk blocks, for files too large to compress here.
	many := func(n int) []xzRecord {
		r := make([]xzRecord, n)
		for i := range r {
			r[i] = xzRecord{unpadded: 5 + int64(i%4), uncompressed: 1<<20 + int64(i%1000)}
		}
		return r
	}
	sum := func(r []xzRecord) (n int64) {
		for _, x := range r {
			n += x.uncompressed
		}
		return n
	}
	big := []xzRecord{{unpadded: 100_000, uncompressed: 5 << 30}}
	tests := []struct {
		name  string
		make  func(t *testing.T) []byte
		want  int64 // -1: ErrNoSize
		reads int   // ReadAt calls, if not 0
	}{
		{"single stream", func(t *testing.T) []byte { return xzOf(t, data) }, int64(len(data)), 1},
		{"empty", func(t *testing.T) []byte { return xzOf(t, nil) }, 0, 1},
		{"blocks", func(t *testing.T) []byte {
			return xzCompress(t, xz.WriterConfig{BlockSize: 100_000, DictCap: 1 << 20, CheckSum: xz.SHA256}, data)
		}, int64(len(data)), 1},
		{"two streams", func(t *testing.T) []byte { return cat(xzOf(t, data), xzOf(t, small)) }, int64(len(data) + len(small)), 1},
		{"stream padding", func(t *testing.T) []byte {
			return cat(xzOf(t, small), make([]byte, 4), xzOf(t, data), make([]byte, 12))
		}, int64(len(data) + len(small)), 2}, // the header of the second stream is far from the end
		{"streams apart", func(t *testing.T) []byte {
			return cat(fakeXZStream(big), make([]byte, 8), fakeXZStream(big), fakeXZStream(big))
		}, 15 << 30, 3},
		{"large index", func(t *testing.T) []byte { return fakeXZStream(many(50_000)) }, sum(many(50_000)), 2},
		{"index too large", func(t *testing.T) []byte {
			// The backward size says 32 MiB; nothing is read of it.
			return cat(make([]byte, 1000), fakeXZFooter(8<<20-1, []byte{0, 1}))
		}, -1, 1},
		{"too many streams", func(t *testing.T) []byte {
			var b []byte
			for range xzMaxReads + 1 {
				b = append(b, fakeXZStream(big)...)
			}
			return b
		}, -1, xzMaxReads},
		{"corrupt index CRC", func(t *testing.T) []byte {
			b := xzOf(t, data)
			b[len(b)-xzFooterLen-1] ^= 1
			return b
		}, -1, 1},
		{"corrupt record", func(t *testing.T) []byte {
			b := xzOf(t, data)
			b[len(b)-xzFooterLen-6] ^= 1 // covered by the index CRC
			return b
		}, -1, 1},
		{"corrupt footer CRC", func(t *testing.T) []byte {
			b := xzOf(t, data)
			b[len(b)-xzFooterLen] ^= 1
			return b
		}, -1, 1},
		{"corrupt header of a second stream", func(t *testing.T) []byte {
			a := xzOf(t, small)
			b := xzOf(t, data)
			b[7] ^= 1
			return cat(a, b)
		}, -1, 2},
		{"truncated", func(t *testing.T) []byte { b := xzOf(t, data); return b[:len(b)-4] }, -1, 1},
		{"missing start", func(t *testing.T) []byte { b := xzOf(t, data); return b[4:] }, -1, 1},
		{"junk before a stream", func(t *testing.T) []byte { return cat([]byte("junk"), xzOf(t, small)) }, -1, 1},
		{"padding only", func(t *testing.T) []byte { return make([]byte, 64) }, -1, 1},
		{"padding before the stream", func(t *testing.T) []byte { return cat(make([]byte, 4), xzOf(t, small)) }, -1, 1},
		{"odd padding", func(t *testing.T) []byte { return cat(xzOf(t, small), make([]byte, 2)) }, -1, 0},
		{"too short", func(t *testing.T) []byte { return xzOf(t, nil)[:28] }, -1, 0},
		{"empty file", func(t *testing.T) []byte { return nil }, -1, 0},
		{"random", func(t *testing.T) []byte {
			b := make([]byte, 100_000)
			rand.NewChaCha8([32]byte{5, 6}).Read(b)
			return b
		}, -1, 1},
		{"gzip", func(t *testing.T) []byte { return compress(t, "gzip", data) }, -1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := tt.make(t)
			ra := &countingReaderAt{ra: bytes.NewReader(b)}
			got, err := XZSize(ra, int64(len(b)))
			if tt.want < 0 {
				if !errors.Is(err, ErrNoSize) {
					t.Errorf("XZSize = %d, %v; want ErrNoSize", got, err)
				} else {
					t.Logf("error: %v", err)
				}
			} else if got != tt.want || err != nil {
				t.Errorf("XZSize = %d, %v; want %d", got, err, tt.want)
			}
			if tt.reads != 0 && ra.calls != tt.reads {
				t.Errorf("%d ReadAt calls of %d bytes; want %d", ra.calls, ra.bytes, tt.reads)
			}
			if tt.reads == 0 && ra.calls > 1 {
				t.Errorf("%d ReadAt calls of %d bytes", ra.calls, ra.bytes)
			}
		})
	}
}

// An index larger than a read is read in pieces.
func TestXZSizeLargeIndex(t *testing.T) {
	records := make([]xzRecord, 1_300_000) // 5.2 MB of index
	var want int64
	for i := range records {
		records[i] = xzRecord{unpadded: 1000 + int64(i%7), uncompressed: 1<<20 + int64(i%1000)}
		want += records[i].uncompressed
	}
	f := fakeXZSparse(records)
	ra := &countingReaderAt{ra: f}
	if got, err := XZSize(ra, f.size()); got != want || err != nil {
		t.Errorf("XZSize = %d, %v; want %d", got, err, want)
	}
	// 64 KiB at the end, then the index 4 MiB at a time.
	if ra.calls != 3 {
		t.Errorf("%d ReadAt calls of %d bytes; want 3", ra.calls, ra.bytes)
	}
}

// An error from the ReaderAt is ErrNoSize, and keeps its own identity; a
// size larger than the file is too.
func TestXZSizeReadError(t *testing.T) {
	b := xzCompress(t, xz.WriterConfig{DictCap: 1 << 20}, disk(t, 1000))
	boom := errors.New("HTTP 503")
	_, err := XZSize(errReaderAt{boom}, int64(len(b)))
	if !errors.Is(err, ErrNoSize) || !errors.Is(err, boom) {
		t.Errorf("error %v; want ErrNoSize and the read's", err)
	}
	_, err = XZSize(bytes.NewReader(b), int64(len(b))+4)
	if !errors.Is(err, ErrNoSize) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("error %v; want ErrNoSize and io.ErrUnexpectedEOF", err)
	}
}

type errReaderAt struct{ err error }

func (e errReaderAt) ReadAt([]byte, int64) (int, error) { return 0, e.err }

// XZSize agrees with the xz tool.
func TestXZSizeTool(t *testing.T) {
	data := disk(t, bigDisk)
	for _, args := range [][]string{{"-c", "-1"}, {"-c", "-T2", "--block-size=64KiB", "--check=sha256"}} {
		b := tool(t, data, "xz", args...)
		b = slices.Concat(b, make([]byte, 4), tool(t, data[:5000], "xz", args...))
		if n, err := XZSize(bytes.NewReader(b), int64(len(b))); n != int64(len(data))+5000 || err != nil {
			t.Errorf("xz %v: XZSize = %d, %v", args, n, err)
		}
	}
}
