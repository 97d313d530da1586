package decompress

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"os/exec"
	"slices"
	"sync"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/diskimporter/diskimporter/importer/detect"
	"github.com/diskimporter/diskimporter/importer/testdisk"
)

var (
	diskMu    sync.Mutex
	diskCache = map[int64][]byte{}
)

// disk returns the bytes of a test disk of size bytes.
func disk(tb testing.TB, size int64) []byte {
	tb.Helper()
	diskMu.Lock()
	defer diskMu.Unlock()
	if b, ok := diskCache[size]; ok {
		return b
	}
	b, err := io.ReadAll(testdisk.New(size).Reader())
	if err != nil {
		tb.Fatal(err)
	}
	diskCache[size] = b
	return b
}

var (
	fixtureMu sync.Mutex
	fixtures  = map[string]*fixture{}
)

type fixture struct {
	once sync.Once
	made bool
	b    []byte
}

// compress compresses data with c the usual way for the tests: gzip and
// zstd with the klauspost encoders (zstd streamed, so without a content
// size), xz with the ulikunitz encoder and a 1 MiB dictionary, bzip2 with
// the bzip2 tool. It
// compresses the same slice only once, and returns a copy the caller may
// change.
func compress(tb testing.TB, c detect.Compression, data []byte) []byte {
	tb.Helper()
	return cached(tb, fmt.Sprintf("%s/%p/%d", c, data, len(data)), func() []byte {
		return compressOnce(tb, c, data)
	})
}

// cached returns a copy of the fixture made once by make under key.
func cached(tb testing.TB, key string, make func() []byte) []byte {
	tb.Helper()
	fixtureMu.Lock()
	f := fixtures[key]
	if f == nil {
		f = &fixture{}
		fixtures[key] = f
	}
	fixtureMu.Unlock()
	f.once.Do(func() { f.b = make(); f.made = true })
	if !f.made {
		tb.Fatalf("no fixture %s", key) // its maker failed or skipped
	}
	return slices.Clone(f.b)
}

func compressOnce(tb testing.TB, c detect.Compression, data []byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	switch c {
	case detect.None:
		return slices.Clone(data)
	case detect.Gzip:
		w := gzip.NewWriter(&buf)
		mustWrite(tb, w, data)
	case detect.Zstd:
		return zstdStream(tb, data)
	case detect.XZ:
		return xzCompress(tb, xz.WriterConfig{DictCap: 1 << 20}, data)
	case detect.Bzip2:
		return bzip2Tool(tb, data)
	default:
		tb.Fatalf("no compressor for %s", c)
	}
	return buf.Bytes()
}

func mustWrite(tb testing.TB, w io.WriteCloser, data []byte) {
	tb.Helper()
	if _, err := w.Write(data); err != nil {
		tb.Fatal(err)
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
}

// zstdStream compresses data as a stream, writing it in pieces: the frame
// header has no content size.
func zstdStream(tb testing.TB, data []byte, opts ...zstd.EOption) []byte {
	tb.Helper()
	var buf bytes.Buffer
	w, err := zstd.NewWriter(&buf, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	for len(data) > 0 {
		n := min(len(data), 100_000)
		if _, err := w.Write(data[:n]); err != nil {
			tb.Fatal(err)
		}
		data = data[n:]
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// xzCompress compresses data with the ulikunitz encoder configured by
// cfg. The dictionary size it records is what the decoder allocates, for
// every block: keep it small for fixtures decoded many times.
func xzCompress(tb testing.TB, cfg xz.WriterConfig, data []byte) []byte {
	tb.Helper()
	return cached(tb, fmt.Sprintf("xz/%+v/%p/%d", cfg, data, len(data)), func() []byte {
		return xzCompressOnce(tb, cfg, data)
	})
}

func xzCompressOnce(tb testing.TB, cfg xz.WriterConfig, data []byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	w, err := cfg.NewWriter(&buf)
	if err != nil {
		tb.Fatal(err)
	}
	mustWrite(tb, w, data)
	return buf.Bytes()
}

// bzip2Tool compresses data with the bzip2 command (Go has no bzip2
// encoder), or skips the test if there is none.
func bzip2Tool(tb testing.TB, data []byte) []byte {
	tb.Helper()
	return tool(tb, data, "bzip2", "-c", "-9")
}

// tool runs a command with data as its input and returns its output, or
// skips the test if the command is missing.
func tool(tb testing.TB, data []byte, name string, args ...string) []byte {
	tb.Helper()
	if _, err := exec.LookPath(name); err != nil {
		tb.Skipf("no %s command: %v", name, err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("%s: %v", name, err)
	}
	return out
}

// decode decompresses data with NewReader.
func decode(c detect.Compression, data []byte) ([]byte, error) {
	r, err := NewReader(c, hide{bytes.NewReader(data)})
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

// hide hides the methods of a reader but Read, as an HTTP body does.
type hide struct{ r io.Reader }

func (h hide) Read(p []byte) (int, error) { return h.r.Read(p) }

// countingReaderAt counts ReadAt calls and bytes.
type countingReaderAt struct {
	ra    io.ReaderAt
	calls int
	bytes int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.calls++
	c.bytes += int64(len(p))
	return c.ra.ReadAt(p, off)
}

// xzRecord is a block of a synthetic .xz stream.
type xzRecord struct{ unpadded, uncompressed int64 }

// fakeXZStream builds an .xz stream with blocks of the given sizes whose
// contents are junk: enough for XZSize, which reads no block.
func fakeXZStream(records []xzRecord) []byte {
	head, _, tail := fakeXZParts(records)
	s := head
	for _, r := range records {
		s = append(s, make([]byte, (r.unpadded+3)&^3)...)
		s[len(s)-1] = 0xaa
	}
	return append(s, tail...)
}

// fakeXZSparse is fakeXZStream with zeros for blocks, which take no memory.
func fakeXZSparse(records []xzRecord) *sparseFile {
	head, blocks, tail := fakeXZParts(records)
	return &sparseFile{head: head, gap: blocks, tail: tail}
}

// fakeXZParts returns the parts of a fake stream: its header, the size of
// its blocks, and its index and footer.
func fakeXZParts(records []xzRecord) (head []byte, blocks int64, tail []byte) {
	flags := []byte{0, 0x01} // CRC32
	head = xzStreamHeader(flags)
	for _, r := range records {
		blocks += (r.unpadded + 3) &^ 3
	}
	return head, blocks, xzIndexAndFooter(records, flags)
}

// xzStreamHeader returns a stream header with the stream flags flags.
func xzStreamHeader(flags []byte) []byte {
	head := slices.Concat(xzHeaderMagic, flags)
	return binary.LittleEndian.AppendUint32(head, crc32.ChecksumIEEE(flags))
}

// xzIndexAndFooter returns the index of a stream of the given blocks and
// the stream footer, with the stream flags flags.
func xzIndexAndFooter(records []xzRecord, flags []byte) []byte {
	index := []byte{0}
	index = binary.AppendUvarint(index, uint64(len(records)))
	for _, r := range records {
		index = binary.AppendUvarint(index, uint64(r.unpadded))
		index = binary.AppendUvarint(index, uint64(r.uncompressed))
	}
	for len(index)%4 != 0 {
		index = append(index, 0)
	}
	index = binary.LittleEndian.AppendUint32(index, crc32.ChecksumIEEE(index))
	return append(index, fakeXZFooter(uint32(len(index)/4-1), flags)...)
}

// sparseFile is a file of head, gap zero bytes and tail.
type sparseFile struct {
	head []byte
	gap  int64
	tail []byte
}

func (f *sparseFile) size() int64 { return int64(len(f.head)) + f.gap + int64(len(f.tail)) }

func (f *sparseFile) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) && off < f.size() {
		var k int
		switch h := int64(len(f.head)); {
		case off < h:
			k = copy(p[n:], f.head[off:])
		case off < h+f.gap:
			k = int(min(int64(len(p)-n), h+f.gap-off))
			clear(p[n : n+k])
		default:
			k = copy(p[n:], f.tail[off-h-f.gap:])
		}
		n, off = n+k, off+int64(k)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func fakeXZFooter(backward uint32, flags []byte) []byte {
	f := make([]byte, 4, xzFooterLen)
	f = binary.LittleEndian.AppendUint32(f, backward)
	f = append(f, flags...)
	binary.LittleEndian.PutUint32(f, crc32.ChecksumIEEE(f[4:10]))
	return append(f, xzFooterMagic...)
}

// xzBlockEnds returns the offsets at which the blocks of the .xz file b
// end, from XZSize's view of its index.
func xzBlockEnds(tb testing.TB, b []byte) []int64 {
	tb.Helper()
	var recs []int64
	var ends []int64
	_, err := xzWalk(bytes.NewReader(b), int64(len(b)), &xzVisitor{
		record: func(unpadded, _ int64) { recs = append(recs, unpadded) },
		stream: func(start int64) {
			off := start + xzHeaderLen
			for _, u := range recs {
				off += (u + 3) &^ 3
				ends = append(ends, off)
			}
			recs = recs[:0]
		},
	})
	if err != nil {
		tb.Fatal(err)
	}
	return ends
}
