package decompress

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/diskimporter/diskimporter/importer/detect"
	"github.com/diskimporter/diskimporter/importer/testdisk"
)

// The sizes of the test disks: large enough to hold several blocks of
// every kind, small enough to decode quickly under the race detector.
const (
	bigDisk   = 1<<20 + 1234
	smallDisk = 3*testdisk.BlockSize + 321
)

var formats = []detect.Compression{detect.Gzip, detect.Zstd, detect.XZ, detect.Bzip2}

func TestRoundTrip(t *testing.T) {
	data := disk(t, bigDisk)
	medium := disk(t, smallDisk)
	small := disk(t, 1000)
	cat := func(parts ...[]byte) []byte { return slices.Concat(parts...) }
	tests := []struct {
		name string
		c    detect.Compression
		make func(t *testing.T) []byte
		want []byte
	}{
		{"none", detect.None, func(t *testing.T) []byte { return data }, data},
		{"gzip", detect.Gzip, func(t *testing.T) []byte { return compress(t, detect.Gzip, data) }, data},
		{"gzip/two members", detect.Gzip, func(t *testing.T) []byte {
			return cat(compress(t, detect.Gzip, data), compress(t, detect.Gzip, small))
		}, cat(data, small)},
		{"gzip/empty", detect.Gzip, func(t *testing.T) []byte { return compress(t, detect.Gzip, nil) }, nil},
		{"zstd/stream", detect.Zstd, func(t *testing.T) []byte { return compress(t, detect.Zstd, data) }, data},
		{"zstd/EncodeAll", detect.Zstd, func(t *testing.T) []byte {
			e, _ := zstd.NewWriter(nil)
			return e.EncodeAll(data, nil)
		}, data},
		{"zstd/no checksum, best", detect.Zstd, func(t *testing.T) []byte {
			return zstdStream(t, data, zstd.WithEncoderCRC(false), zstd.WithEncoderLevel(zstd.SpeedBestCompression))
		}, data},
		{"zstd/two frames and a skippable one", detect.Zstd, func(t *testing.T) []byte {
			skip := binary.LittleEndian.AppendUint32(nil, 0x184d2a53)
			skip = binary.LittleEndian.AppendUint32(skip, 3)
			skip = append(skip, "abc"...)
			return cat(compress(t, detect.Zstd, data), skip, compress(t, detect.Zstd, small))
		}, cat(data, small)},
		{"xz", detect.XZ, func(t *testing.T) []byte { return compress(t, detect.XZ, data) }, data},
		{"xz/default 8 MiB dictionary", detect.XZ, func(t *testing.T) []byte {
			return xzCompress(t, xz.WriterConfig{}, medium)
		}, medium},
		{"xz/blocks", detect.XZ, func(t *testing.T) []byte {
			return xzCompress(t, xz.WriterConfig{BlockSize: 50_000, CheckSum: xz.SHA256, DictCap: 1 << 18}, medium)
		}, medium},
		{"xz/two streams with padding", detect.XZ, func(t *testing.T) []byte {
			return cat(compress(t, detect.XZ, data), make([]byte, 8), compress(t, detect.XZ, small), make([]byte, 4))
		}, cat(data, small)},
		{"xz/streams of blocks, each check, padding", detect.XZ, func(t *testing.T) []byte {
			return cat(xzCompress(t, xz.WriterConfig{DictCap: 1 << 16, BlockSize: 30_000, CheckSum: xz.CRC32}, medium),
				make([]byte, 4),
				xzCompress(t, xz.WriterConfig{DictCap: 1 << 16, BlockSize: 30_000, NoCheckSum: true}, small),
				make([]byte, 12),
				xzCompress(t, xz.WriterConfig{DictCap: 1 << 16, BlockSize: 30_000, CheckSum: xz.CRC64}, medium),
				xzCompress(t, xz.WriterConfig{DictCap: 1 << 16, BlockSize: 30_000, CheckSum: xz.SHA256}, nil))
		}, cat(medium, small, medium)},
		{"xz/empty", detect.XZ, func(t *testing.T) []byte { return compress(t, detect.XZ, nil) }, nil},
		{"bzip2", detect.Bzip2, func(t *testing.T) []byte { return compress(t, detect.Bzip2, data) }, data},
		{"bzip2/two streams", detect.Bzip2, func(t *testing.T) []byte {
			return cat(compress(t, detect.Bzip2, data), compress(t, detect.Bzip2, small))
		}, cat(data, small)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in := tt.make(t)
			if tt.c != detect.None {
				if got := detect.CompressionOf(in); got != tt.c {
					t.Fatalf("fixture detected as %s", got)
				}
			}
			got, err := decode(tt.c, in)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Fatalf("decoded %d bytes, want %d, or they differ", len(got), len(tt.want))
			}
		})
	}
}

// cuts returns the lengths to truncate a compressed input of n bytes to:
// every length near the start (headers), near the end (trailers, indexes,
// footers), some in between, and those around the offsets in extra.
func cuts(n int, extra ...int64) []int {
	var c []int
	for i := 0; i < n; i++ {
		if i < 80 || i >= n-24 || i%(n/20+1) == 0 {
			c = append(c, i)
		}
	}
	for _, e := range extra {
		for d := -1; d <= 1; d++ {
			if i := int(e) + d; i >= 0 && i < n {
				c = append(c, i)
			}
		}
	}
	slices.Sort(c)
	return slices.Compact(c)
}

// A truncated input is an error, never a short decompressed content.
func TestTruncated(t *testing.T) {
	data := disk(t, smallDisk)
	tests := []struct {
		name string
		c    detect.Compression
		make func(t *testing.T) []byte
	}{
		{"gzip", detect.Gzip, func(t *testing.T) []byte { return compress(t, detect.Gzip, data) }},
		{"zstd", detect.Zstd, func(t *testing.T) []byte { return compress(t, detect.Zstd, data) }},
		{"zstd/EncodeAll", detect.Zstd, func(t *testing.T) []byte {
			e, _ := zstd.NewWriter(nil)
			return e.EncodeAll(data, nil)
		}},
		{"xz", detect.XZ, func(t *testing.T) []byte {
			return xzCompress(t, xz.WriterConfig{DictCap: 1 << 18}, data)
		}},
		{"xz/blocks", detect.XZ, func(t *testing.T) []byte {
			return xzCompress(t, xz.WriterConfig{BlockSize: 40_000, DictCap: 1 << 18}, data)
		}},
		{"bzip2", detect.Bzip2, func(t *testing.T) []byte { return compress(t, detect.Bzip2, data) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in := tt.make(t)
			var extra []int64
			if tt.c == detect.XZ {
				// The xz package takes an input that ends between
				// blocks for a complete one.
				extra = xzBlockEnds(t, in)
				extra = append(extra, xzHeaderLen)
			}
			for _, n := range cuts(len(in), extra...) {
				got, err := decode(tt.c, in[:n])
				if !errors.Is(err, ErrCorrupt) || !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Errorf("cut to %d of %d bytes: %d bytes, error %v; want ErrCorrupt and io.ErrUnexpectedEOF",
						n, len(in), len(got), err)
				}
			}
		})
	}
}

// A changed byte is an error, of the ErrCorrupt kind.
func TestCorruptByte(t *testing.T) {
	data := disk(t, smallDisk)
	for _, c := range formats {
		t.Run(string(c), func(t *testing.T) {
			t.Parallel()
			in := compress(t, c, data)
			rnd := rand.New(rand.NewPCG(1, 2))
			for i := 0; i < 20; i++ {
				off := len(in)/4 + rnd.IntN(len(in)/2)
				bad := slices.Clone(in)
				bad[off] ^= 1 << rnd.IntN(8)
				got, err := decode(c, bad)
				if !errors.Is(err, ErrCorrupt) {
					t.Errorf("bit flipped at %d of %d: %d bytes, error %v; want ErrCorrupt", off, len(in), len(got), err)
				}
			}
		})
	}
}

// Anything after the compressed data is an error.
func TestTrailingGarbage(t *testing.T) {
	data := disk(t, 1000)
	for _, c := range formats {
		t.Run(string(c), func(t *testing.T) {
			t.Parallel()
			in := append(compress(t, c, data), "garbage!"...)
			if _, err := decode(c, in); !errors.Is(err, ErrCorrupt) {
				t.Errorf("error %v; want ErrCorrupt", err)
			}
		})
	}
}

// An error reading the input is the input's, not ErrCorrupt.
func TestInputError(t *testing.T) {
	data := disk(t, smallDisk)
	boom := errors.New("connection reset")
	for _, c := range formats {
		t.Run(string(c), func(t *testing.T) {
			t.Parallel()
			in := compress(t, c, data)
			for _, n := range []int{0, 5, len(in) / 2} {
				r := io.MultiReader(bytes.NewReader(in[:n]), iotest.ErrReader(boom))
				d, err := NewReader(c, r)
				if err == nil {
					_, err = io.ReadAll(d)
					d.Close()
				}
				if !errors.Is(err, boom) || errors.Is(err, ErrCorrupt) {
					t.Errorf("after %d bytes: error %v; want the input's", n, err)
				}
			}
		})
	}
}

func TestNoneAndUnknown(t *testing.T) {
	r, err := NewReader(detect.None, bytes.NewReader([]byte("raw")))
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(r); string(b) != "raw" || err != nil {
		t.Errorf("none: %q, %v", b, err)
	}
	if _, err := NewReader("lz4", bytes.NewReader(nil)); err == nil {
		t.Error("unknown compression accepted")
	}
}

func TestEmptyInput(t *testing.T) {
	for _, c := range formats {
		if got, err := decode(c, nil); !errors.Is(err, ErrCorrupt) || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("%s: %d bytes, %v; want truncated", c, len(got), err)
		}
	}
}

// Inputs that need more memory than allowed are refused as unsupported.
func TestLimits(t *testing.T) {
	data := disk(t, 1000)
	t.Run("zstd window", func(t *testing.T) {
		in := zstdStream(t, disk(t, smallDisk))
		// Streamed: no single segment, a window descriptor after the
		// frame header descriptor. Ask for a 1 GiB window.
		if in[4]&0x20 != 0 {
			t.Fatalf("frame header descriptor %#x: single segment", in[4])
		}
		in[5] = (30 - 10) << 3
		if _, err := decode(detect.Zstd, in); !errors.Is(err, ErrUnsupported) || errors.Is(err, ErrCorrupt) {
			t.Errorf("error %v; want ErrUnsupported", err)
		}
	})
	xzBlockHeader := func(t *testing.T, in []byte, edit func(h []byte)) {
		h := in[xzHeaderLen : xzHeaderLen+(int(in[xzHeaderLen])+1)*4]
		edit(h)
		binary.LittleEndian.PutUint32(h[len(h)-4:], crc32.ChecksumIEEE(h[:len(h)-4]))
	}
	t.Run("xz dictionary", func(t *testing.T) {
		in := compress(t, detect.XZ, data)
		xzBlockHeader(t, in, func(h []byte) {
			// flags 0: one filter, no sizes; then LZMA2, one byte of
			// properties: a dictionary of 1 GiB.
			if h[1] != 0 || h[2] != 0x21 || h[3] != 1 {
				t.Fatalf("unexpected block header % x", h)
			}
			h[4] = 36
		})
		_, err := decode(detect.XZ, in)
		if !errors.Is(err, ErrUnsupported) || errors.Is(err, ErrCorrupt) {
			t.Errorf("error %v; want ErrUnsupported", err)
		}
	})
	t.Run("xz filter", func(t *testing.T) {
		in := compress(t, detect.XZ, data)
		xzBlockHeader(t, in, func(h []byte) { h[2] = 0x04 }) // x86 BCJ
		if _, err := decode(detect.XZ, in); !errors.Is(err, ErrUnsupported) {
			t.Errorf("error %v; want ErrUnsupported", err)
		}
	})
}

func TestClose(t *testing.T) {
	in := compress(t, detect.Zstd, disk(t, bigDisk))
	before := runtime.NumGoroutine()
	for i := 0; i < 10; i++ {
		r, err := NewReader(detect.Zstd, bytes.NewReader(in))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Read(make([]byte, 1000)); err != nil {
			t.Fatal(err)
		}
		r.Close()
		if _, err := r.Read(make([]byte, 10)); err == nil || errors.Is(err, ErrCorrupt) || err == io.EOF {
			t.Errorf("read after Close: %v", err)
		}
		r.Close()
	}
	waitGoroutines(t, before)
}

// Files made by the C tools decode, and their sizes are found.
func TestCTools(t *testing.T) {
	data := disk(t, bigDisk)
	tests := []struct {
		c    detect.Compression
		name string
		args []string
	}{
		{detect.Gzip, "gzip", []string{"-c"}},
		{detect.Zstd, "zstd", []string{"-c", "-q"}},
		{detect.Zstd, "zstd", []string{"-c", "-q", "--long=27", "-19"}},
		{detect.XZ, "xz", []string{"-c", "-T2", "--block-size=500KiB"}},
		{detect.XZ, "xz", []string{"-c", "-0", "--check=none"}},
		{detect.Bzip2, "bzip2", []string{"-c"}},
	}
	for _, tt := range tests {
		t.Run(tt.name+strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			in := tool(t, data, tt.name, tt.args...)
			got, err := decode(tt.c, in)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("%d bytes, %v", len(got), err)
			}
			if tt.c == detect.XZ {
				if n, err := XZSize(bytes.NewReader(in), int64(len(in))); n != int64(len(data)) || err != nil {
					t.Errorf("XZSize: %d, %v", n, err)
				}
			}
			if tt.c == detect.Zstd {
				// From a pipe the tool does not know the size.
				if n, ok := ZstdSize(in); ok {
					t.Errorf("ZstdSize of a piped zstd: %d", n)
				}
			}
		})
	}
}

// The zstd tool records the size when it compresses a file.
func TestZstdToolFile(t *testing.T) {
	if _, err := exec.LookPath("zstd"); err != nil {
		t.Skip(err)
	}
	data := disk(t, bigDisk)
	name := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(name, data, 0o644); err != nil {
		t.Fatal(err)
	}
	in, err := exec.Command("zstd", "-q", "-c", name).Output()
	if err != nil {
		t.Fatal(err)
	}
	if n, ok := ZstdSize(in); n != int64(len(data)) || !ok {
		t.Errorf("ZstdSize: %d, %v; want %d", n, ok, len(data))
	}
}
