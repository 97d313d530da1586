package decompress

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"testing/iotest"
	"time"

	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"

	"github.com/diskimporter/diskimporter/importer/detect"
)

// Options of the xz decoder in the tests.
var (
	serialXZ = xzOptions{}
	twoXZ    = xzOptions{workers: 2, memory: XZParallelMemory}
)

// xzTestBlock is a block that buildXZ writes.
type xzTestBlock struct {
	data    []byte
	noSizes bool // the block header does not give the block's sizes
	dict    int  // the LZMA2 dictionary, at least; 0 for 64 KiB
}

// lzma2Props returns the LZMA2 properties byte of the smallest dictionary
// of at least n bytes.
func lzma2Props(n int) byte {
	p := byte(0)
	for p < 40 && lzma2Dict(p) < uint64(n) {
		p++
	}
	return p
}

// lzma2Of compresses data to LZMA2 data, end marker included, with the
// ulikunitz encoder and a dictionary of dict bytes.
func lzma2Of(tb testing.TB, data []byte, dict int) []byte {
	tb.Helper()
	return cached(tb, fmt.Sprintf("lzma2/%p/%d/%d", data, len(data), dict), func() []byte {
		var buf bytes.Buffer
		w, err := lzma.Writer2Config{DictCap: dict}.NewWriter2(&buf)
		if err != nil {
			tb.Fatal(err)
		}
		for p := data; len(p) > 0; p = p[min(len(p), 4096):] {
			if _, err := w.Write(p[:min(len(p), 4096)]); err != nil {
				tb.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			tb.Fatal(err)
		}
		return buf.Bytes()
	})
}

// checkOf returns the check field of the check type t for data.
func checkOf(t byte, data []byte) []byte {
	h := newCheck(t)
	if h == nil {
		return nil
	}
	h.Write(data)
	switch h := h.(type) {
	case hash.Hash32:
		return binary.LittleEndian.AppendUint32(nil, h.Sum32())
	case hash.Hash64:
		return binary.LittleEndian.AppendUint64(nil, h.Sum64())
	}
	return h.Sum(nil)
}

// buildXZ returns an .xz stream of the blocks, whose check is check.
// Unless a block says otherwise, its header gives both its sizes, as xz
// -T0 writes them.
func buildXZ(tb testing.TB, check byte, blocks ...xzTestBlock) []byte {
	tb.Helper()
	flags := []byte{0, check}
	out := xzStreamHeader(flags)
	var recs []xzRecord
	for _, b := range blocks {
		props := lzma2Props(cmp.Or(b.dict, 64<<10))
		comp := lzma2Of(tb, b.data, int(lzma2Dict(props)))
		var fields []byte
		var bf byte
		if !b.noSizes {
			bf = 0xc0
			fields = binary.AppendUvarint(fields, uint64(len(comp)))
			fields = binary.AppendUvarint(fields, uint64(len(b.data)))
		}
		h := xzBlockHeader(bf, append(fields, lzma2Filter, 1, props)...)
		out = slices.Concat(out, h, comp, make([]byte, -(len(h)+len(comp))&3), checkOf(check, b.data))
		recs = append(recs, xzRecord{int64(len(h) + len(comp) + checkLen(check)), int64(len(b.data))})
	}
	return append(out, xzIndexAndFooter(recs, flags)...)
}

// split cuts data into blocks of the given sizes, the last one repeated
// to the end.
func split(data []byte, sizes ...int) []xzTestBlock {
	var blocks []xzTestBlock
	for i := 0; len(data) > 0; i++ {
		n := min(len(data), sizes[min(i, len(sizes)-1)])
		blocks = append(blocks, xzTestBlock{data: data[:n]})
		data = data[n:]
	}
	return blocks
}

// noise returns n random bytes, the same for the same seed.
func noise(n int, seed byte) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{seed}).Read(b)
	return b
}

// xzResult is how decoding an .xz file went.
type xzResult struct {
	out    []byte
	err    error
	handed int   // blocks decoded on workers
	peak   int64 // the most memory the blocks on workers took at once
	most   int   // the most blocks on workers at once
}

// decodeXZ decodes in whole with the options o, through a reader with
// nothing but Read.
func decodeXZ(in []byte, o xzOptions) xzResult {
	return decodeXZFrom(hide{bytes.NewReader(in)}, o)
}

func decodeXZFrom(in io.Reader, o xzOptions) xzResult {
	r, err := newReader(detect.XZ, in, o)
	if err != nil {
		return xzResult{err: err}
	}
	out, err := io.ReadAll(r)
	r.Close()
	res := xzResult{out: out, err: err}
	if p := r.(*reader).dec.(*xzDecoder).par; p != nil {
		res.handed, res.peak, res.most = p.handed, p.peak, p.most
	}
	return res
}

// errClass returns the kind of err: "EOF" for none, "corrupt",
// "unsupported", or "other".
func errClass(err error) string {
	switch {
	case err == nil:
		return "EOF"
	case errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupported):
		return "corrupt"
	case errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrCorrupt):
		return "unsupported"
	}
	return "other"
}

// sameAsSerial decodes in serially and with each of the options opts, and
// fails unless each agrees with the serial decoding: the same bytes as
// far as both go, the same kind of end, and the same output when that is
// the end of the input. (A corrupt block can decode to a few more or
// fewer bytes in either before the decoder notices.) It returns the
// serial decoding and the last other.
func sameAsSerial(t *testing.T, in []byte, opts ...xzOptions) (ser, par xzResult) {
	t.Helper()
	ser = decodeXZ(in, serialXZ)
	for _, o := range opts {
		par = decodeXZ(in, o)
		n := min(len(ser.out), len(par.out))
		if !bytes.Equal(ser.out[:n], par.out[:n]) {
			t.Fatalf("%+v: the output differs from the serial decoder's from byte %d", o, firstDiffByte(ser.out, par.out))
		}
		if cs, cp := errClass(ser.err), errClass(par.err); cs != cp {
			t.Fatalf("%+v: %d bytes and %s (%v); serially %d bytes and %s (%v)", o, len(par.out), cp, par.err, len(ser.out), cs, ser.err)
		}
		if ser.err == nil && len(par.out) != len(ser.out) {
			t.Fatalf("%+v: %d bytes; serially %d", o, len(par.out), len(ser.out))
		}
	}
	return ser, par
}

// xzTool compresses data with the xz command and args, or skips the test.
func xzTool(tb testing.TB, data []byte, args ...string) []byte {
	tb.Helper()
	return cached(tb, fmt.Sprintf("xztool/%p/%d/%q", data, len(data), args), func() []byte {
		return tool(tb, data, "xz", append([]string{"-c"}, args...)...)
	})
}

// Files whose block headers give the blocks' sizes decode on workers, to
// the same bytes as serially, whatever the number of workers and memory.
func TestXZParallelRoundTrip(t *testing.T) {
	data := disk(t, smallDisk)
	small := disk(t, 3000)
	rnd := noise(100_000, 3)
	mixed := split(data, 30_000, 50_000, 10_000)
	for i := range mixed {
		mixed[i].noSizes = i%2 == 1
	}
	tests := []struct {
		name   string
		in     func(t *testing.T) []byte
		want   []byte
		serial int // blocks decoded serially
	}{
		{"CRC64", func(t *testing.T) []byte { return buildXZ(t, xzCheckCRC64, split(data, 50_000)...) }, data, 0},
		{"CRC32, one block", func(t *testing.T) []byte { return buildXZ(t, xzCheckCRC32, split(data, len(data))...) }, data, 0},
		{"no check", func(t *testing.T) []byte { return buildXZ(t, xzCheckNone, split(data, 70_000)...) }, data, 0},
		{"SHA-256, small blocks", func(t *testing.T) []byte { return buildXZ(t, xzCheckSHA256, split(small, 500)...) }, small, 0},
		{"incompressible", func(t *testing.T) []byte { return buildXZ(t, xzCheckCRC64, split(rnd, 40_000)...) }, rnd, 0},
		{"empty blocks", func(t *testing.T) []byte {
			return buildXZ(t, xzCheckCRC32, xzTestBlock{}, xzTestBlock{data: small}, xzTestBlock{}, xzTestBlock{})
		}, small, 0},
		{"dictionary larger than the blocks", func(t *testing.T) []byte {
			b := split(data, 50_000)
			for i := range b {
				b[i].dict = 8 << 20
			}
			return buildXZ(t, xzCheckCRC64, b...)
		}, data, 0},
		{"dictionaries of each size", func(t *testing.T) []byte {
			b := split(data, 30_000)
			for i := range b {
				b[i].dict = 64 << 10 << (i % 6)
			}
			return buildXZ(t, xzCheckCRC64, b...)
		}, data, 0},
		{"blocks with and without sizes", func(t *testing.T) []byte { return buildXZ(t, xzCheckCRC64, mixed...) }, data, (len(mixed)) / 2},
		{"streams and padding", func(t *testing.T) []byte {
			return slices.Concat(buildXZ(t, xzCheckCRC32, split(data, 100_000)...), make([]byte, 8),
				xzCompress(t, xz.WriterConfig{DictCap: 1 << 16}, small),
				buildXZ(t, xzCheckSHA256, split(small, 1000)...), make([]byte, 4),
				buildXZ(t, xzCheckNone))
		}, slices.Concat(data, small, small), 1},
		{"xz -T0", func(t *testing.T) []byte { return xzTool(t, data, "-T0") }, data, 0},
		{"xz -T2 --block-size=100KiB -9e", func(t *testing.T) []byte { return xzTool(t, data, "-T2", "--block-size=50KiB", "-9e") }, data, 0},
		{"xz -T0 --block-size=64KiB --check=sha256 -0", func(t *testing.T) []byte {
			return xzTool(t, data, "-T0", "--block-size=64KiB", "--check=sha256", "-0")
		}, data, 0},
		{"xz -T1 --block-size=50KiB", func(t *testing.T) []byte { return xzTool(t, data, "-T1", "--block-size=50KiB") }, data, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in := tt.in(t)
			blocks := len(xzBlocksOf(t, in))
			if ser := decodeXZ(in, serialXZ); ser.handed != 0 || ser.err != nil {
				t.Fatalf("serially, %d blocks on workers, %v", ser.handed, ser.err)
			}
			for _, o := range []xzOptions{
				{workers: 1, memory: XZParallelMemory},
				{workers: 3, memory: XZParallelMemory},
				{workers: 8, memory: 1 << 20},
			} {
				_, par := sameAsSerial(t, in, o)
				if !bytes.Equal(par.out, tt.want) || par.err != nil {
					t.Fatalf("%+v: %d bytes, %v; want the %d of the file", o, len(par.out), par.err, len(tt.want))
				}
				if o.memory == XZParallelMemory && par.handed != blocks-tt.serial {
					t.Errorf("%+v: %d of %d blocks decoded on workers, want %d", o, par.handed, blocks, blocks-tt.serial)
				}
				if par.most > o.workers+1 || par.peak > o.memory {
					t.Errorf("%+v: up to %d blocks and %d bytes on workers at once", o, par.most, par.peak)
				}
			}
		})
	}
}

// blockInfoAt parses the block header at off in the .xz file in.
func blockInfoAt(tb testing.TB, in []byte, off int) xzBlockInfo {
	tb.Helper()
	b, err := parseBlockHeader(in[off : off+(int(in[off])+1)*4])
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// xzParallelFixture is a stream of blocks of 60 KB of a disk, with
// sizes, CRC32 checks, and blocks of each padding.
func xzParallelFixture(t *testing.T) ([]byte, []byte) {
	data := disk(t, smallDisk)
	return buildXZ(t, xzCheckCRC32, split(data, 60_001, 60_002, 60_003, 60_000)...), data
}

// Damage to a block decoded on a worker is found as serially, in each
// block: the same error, and the same bytes before it.
func TestXZParallelCorrupt(t *testing.T) {
	in, data := xzParallelFixture(t)
	blocks := xzBlocksOf(t, in)
	edit := func(f func(b []byte)) []byte {
		b := slices.Clone(in)
		f(b)
		return b
	}
	for i, blk := range blocks {
		hl := (int(in[blk.off]) + 1) * 4
		data0 := blk.off + hl       // the block's LZMA2 data
		end := blk.off + blk.padded // the end of its check
		info := blockInfoAt(t, in, blk.off)
		comp, size, props := uint64(info.compressed), uint64(info.size), lzma2Props(int(info.dict))
		header := func(c, u uint64) []byte {
			f := binary.AppendUvarint(binary.AppendUvarint(nil, c), u)
			return xzBlockHeader(0xc0, append(f, lzma2Filter, 1, props)...)
		}
		tests := []struct {
			name string
			in   []byte
		}{
			{"first chunk control", edit(func(b []byte) { b[data0] = 0x80 })},
			{"chunk size", edit(func(b []byte) { b[data0+2] ^= 0x10 })},
			{"LZMA data", edit(func(b []byte) { b[data0+40] ^= 0x04 })},
			{"LZMA data near the end", edit(func(b []byte) { b[data0+int(comp)-20] ^= 0x01 })},
			{"end marker", edit(func(b []byte) { b[data0+int(comp)-1] = 0x01 })},
			{"check", edit(func(b []byte) { b[end-1] ^= 0x80 })},
			{"header CRC32", edit(func(b []byte) { b[blk.off+2] ^= 1 })},
			{"compressed size one more", withBlockHeader(in, blk.off, header(comp+1, size))},
			{"compressed size one less", withBlockHeader(in, blk.off, header(comp-1, size))},
			{"compressed size four less", withBlockHeader(in, blk.off, header(comp-4, size))},
			{"uncompressed size one more", withBlockHeader(in, blk.off, header(comp, size+1))},
			{"uncompressed size one less", withBlockHeader(in, blk.off, header(comp, size-1))},
			{"uncompressed size 0", withBlockHeader(in, blk.off, header(comp, 0))},
			{"block repeated", slices.Concat(in[:end], in[blk.off:])},
			{"block left out", slices.Concat(in[:blk.off], in[end:])},
		}
		if blk.padded > blk.unpadded {
			tests = append(tests, struct {
				name string
				in   []byte
			}{"padding", edit(func(b []byte) { b[data0+int(comp)] = 1 })})
		}
		for _, tt := range tests {
			t.Run(fmt.Sprintf("block %d/%s", i, tt.name), func(t *testing.T) {
				_, par := sameAsSerial(t, tt.in, twoXZ)
				if par.err == nil {
					t.Fatalf("no error, %d bytes", len(par.out))
				}
				var before int64
				for _, b := range blocks[:i] {
					before += b.uncompressed
				}
				if int64(len(par.out)) < before || !bytes.Equal(par.out[:before], data[:before]) {
					t.Errorf("%d bytes; want the %d of the blocks before first", len(par.out), before)
				}
			})
		}
	}
}

// An index that disagrees with the blocks decoded on workers is an error,
// after their output.
func TestXZParallelIndex(t *testing.T) {
	in, data := xzParallelFixture(t)
	blocks := xzBlocksOf(t, in)
	last := blocks[len(blocks)-1]
	withIndex := func(edit func([]xzRecord) []xzRecord) []byte {
		var recs []xzRecord
		for _, b := range blocks {
			recs = append(recs, xzRecord{int64(b.unpadded), b.uncompressed})
		}
		return slices.Concat(in[:last.off+last.padded], xzIndexAndFooter(edit(recs), []byte{0, xzCheckCRC32}))
	}
	tests := []struct {
		name string
		in   []byte
	}{
		{"a record too few", withIndex(func(r []xzRecord) []xzRecord { return r[:len(r)-1] })},
		{"a record too many", withIndex(func(r []xzRecord) []xzRecord { return append(r, r[0]) })},
		{"uncompressed size", withIndex(func(r []xzRecord) []xzRecord { r[1].uncompressed--; return r })},
		{"unpadded size", withIndex(func(r []xzRecord) []xzRecord { r[2].unpadded += 4; return r })},
		{"records swapped", withIndex(func(r []xzRecord) []xzRecord { r[0], r[1] = r[1], r[0]; return r })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, par := sameAsSerial(t, tt.in, twoXZ)
			checkErrorClass(t, par.err, ErrCorrupt)
			if !bytes.Equal(par.out, data) {
				t.Errorf("%d bytes before the error; want the %d of the blocks", len(par.out), len(data))
			}
		})
	}
}

// A truncated file is an error wherever it is cut.
func TestXZParallelTruncated(t *testing.T) {
	in, data := xzParallelFixture(t)
	for _, n := range cuts(len(in), xzBlockEnds(t, in)...) {
		_, par := sameAsSerial(t, in[:n], twoXZ)
		if !errors.Is(par.err, ErrCorrupt) || !errors.Is(par.err, io.ErrUnexpectedEOF) {
			t.Errorf("cut to %d of %d bytes: %d bytes, %v; want ErrCorrupt and io.ErrUnexpectedEOF", n, len(in), len(par.out), par.err)
		}
		if !bytes.HasPrefix(data, par.out) {
			t.Errorf("cut to %d: %d bytes that are not the file's", n, len(par.out))
		}
	}
}

// Sizes in a block header that lie cannot make the decoder allocate much
// more than the input holds, nor go past the limits: blocks too large for
// the workers are decoded serially.
func TestXZParallelHostileSizes(t *testing.T) {
	small := disk(t, 3000)
	in := buildXZ(t, xzCheckCRC32, xzTestBlock{data: small, dict: 8192}, xzTestBlock{data: small, dict: 8 << 20})
	blocks := xzBlocksOf(t, in)
	// header returns a header for block i with sizes c and u, and the
	// LZMA2 properties props, or the block's own if props is 0.
	header := func(i int, c, u uint64, props byte) []byte {
		info := blockInfoAt(t, in, blocks[i].off)
		if props == 0 {
			props = lzma2Props(int(info.dict))
		}
		if c == 0 {
			c = uint64(info.compressed)
		}
		f := binary.AppendUvarint(binary.AppendUvarint(nil, c), u)
		return xzBlockHeader(0xc0, append(f, lzma2Filter, 1, props)...)
	}
	tests := []struct {
		name   string
		block  int
		header []byte
		handed int // blocks on workers
	}{
		{"60 MiB, serially", 0, header(0, 0, 60<<20, 0), 0},
		{"40 MiB and an 8 KiB dictionary, on a worker", 0, header(0, 0, 40<<20, 0), 2},
		{"40 MiB and an 8 MiB dictionary, serially", 1, header(1, 0, 40<<20, 0), 1},
		{"2^62 bytes, serially", 1, header(1, 0, 1<<62, 0), 1},
		{"40 MB of compressed data, on a worker to the end of the input", 0, header(0, 40e6, 3000, 0), 1},
		{"2^62 bytes of compressed data, serially", 0, header(0, 1<<62, 3000, 0), 0},
		{"a 512 MiB dictionary and 20 MiB, on a worker", 1, header(1, 0, 20<<20, 34), 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := withBlockHeader(in, blocks[tt.block].off, tt.header)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			par := decodeXZ(bad, twoXZ)
			runtime.ReadMemStats(&after)
			checkErrorClass(t, par.err, ErrCorrupt)
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > maxTestAlloc {
				t.Errorf("allocated %d MiB", alloc>>20)
			}
			if par.handed != tt.handed {
				t.Errorf("%d blocks on workers, want %d", par.handed, tt.handed)
			}
			sameAsSerial(t, bad, twoXZ)
		})
	}
}

// failAfter is a reader of b that fails with err after n bytes.
func failAfter(b []byte, n int, err error) io.Reader {
	return io.MultiReader(bytes.NewReader(b[:n]), iotest.ErrReader(err))
}

// An error reading the input is the input's, unless a block read before
// it is corrupt: that is found first, as serially.
func TestXZParallelInputError(t *testing.T) {
	in, data := xzParallelFixture(t)
	blocks := xzBlocksOf(t, in)
	boom := errors.New("connection reset")
	cut := blocks[1].off + 100 // in the second block's data
	t.Run("input", func(t *testing.T) {
		par := decodeXZFrom(failAfter(in, cut, boom), twoXZ)
		if !errors.Is(par.err, boom) || errors.Is(par.err, ErrCorrupt) {
			t.Errorf("error %v; want the input's", par.err)
		}
		if !bytes.Equal(par.out, data[:blocks[0].uncompressed]) {
			t.Errorf("%d bytes; want the first block's %d", len(par.out), blocks[0].uncompressed)
		}
	})
	t.Run("corrupt block first", func(t *testing.T) {
		bad := slices.Clone(in)
		bad[blocks[0].off+blocks[0].padded-1] ^= 1 // its check
		for _, o := range []xzOptions{serialXZ, twoXZ} {
			r := decodeXZFrom(failAfter(bad, cut, boom), o)
			if !errors.Is(r.err, ErrCorrupt) || errors.Is(r.err, boom) {
				t.Errorf("%+v: error %v; want ErrCorrupt", o, r.err)
			}
		}
	})
}

// The output of a block decoded on a worker starts before its data is read
// whole: the start of a file is had from the start of the input, as
// inspect reads it.
func TestXZParallelHead(t *testing.T) {
	data := disk(t, 2<<20)
	in := buildXZ(t, xzCheckCRC64, xzTestBlock{data: data, dict: 1 << 20})
	limit := errors.New("no more")
	r, err := newReader(detect.XZ, failAfter(in, len(in)/3, limit), twoXZ)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	head := make([]byte, 64<<10)
	if _, err := io.ReadFull(r, head); err != nil || !bytes.Equal(head, data[:len(head)]) {
		t.Fatalf("%v, or the head differs", err)
	}
	if _, err := io.Copy(io.Discard, r); !errors.Is(err, limit) {
		t.Errorf("error %v; want the input's", err)
	}
}

// Random files, cut into random blocks, decode as serially, and so do
// random changes to them.
func TestXZParallelRandom(t *testing.T) {
	rnd := rand.New(rand.NewPCG(5, 6))
	data := disk(t, smallDisk)
	noise := noise(100_000, 4)
	for i := range 16 {
		var blocks []xzTestBlock
		for range rnd.IntN(5) {
			src := [][]byte{data, noise, make([]byte, 100_000)}[rnd.IntN(3)]
			n := rnd.IntN(min(len(src), 50_000) + 1)
			off := rnd.IntN(len(src) - n + 1)
			blocks = append(blocks, xzTestBlock{data: src[off : off+n], noSizes: rnd.IntN(5) == 0, dict: 64 << 10 << rnd.IntN(6)})
		}
		check := []byte{xzCheckNone, xzCheckCRC32, xzCheckCRC64, xzCheckSHA256}[rnd.IntN(4)]
		in := buildXZ(t, check, blocks...)
		if rnd.IntN(3) == 0 {
			in = slices.Concat(in, make([]byte, 4*rnd.IntN(3)), buildXZ(t, xzCheckCRC32, split(data[:30_000], 10_000)...))
		}
		o := xzOptions{workers: 1 + rnd.IntN(4), memory: int64(1+rnd.IntN(8)) << 20}
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			if _, par := sameAsSerial(t, in, o); par.err != nil {
				t.Fatal(par.err)
			}
			for range 6 {
				sameAsSerial(t, mutate(rnd, in), o)
			}
		})
	}
}

// mutate returns in with a random change: a byte changed, a cut, or a
// piece repeated or left out.
func mutate(rnd *rand.Rand, in []byte) []byte {
	i, j := rnd.IntN(len(in)), rnd.IntN(len(in))
	i, j = min(i, j), max(i, j)
	switch rnd.IntN(4) {
	case 0:
		b := slices.Clone(in)
		b[i] ^= byte(1 + rnd.IntN(255))
		return b
	case 1:
		return in[:i]
	case 2:
		return slices.Concat(in[:j], in[i:])
	}
	return slices.Concat(in[:i], in[j:])
}

// waitGoroutines fails unless the goroutines come down to n.
func waitGoroutines(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := runtime.NumGoroutine(); got > n {
		t.Errorf("%d goroutines, %d before", got, n)
	}
}

// Close stops the workers promptly, at any point, and so does the end of
// the input or an error; no goroutine is left.
func TestXZParallelClose(t *testing.T) {
	data := disk(t, 1<<20)
	in := buildXZ(t, xzCheckCRC64, split(data, 256<<10)...)
	bad := slices.Clone(in)
	bad[len(bad)/2] ^= 1
	before := runtime.NumGoroutine()
	for _, read := range []int{0, 1, 100_000, 600_000} {
		r, err := newReader(detect.XZ, bytes.NewReader(in), twoXZ)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(r, make([]byte, read)); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		r.Close()
		if d := time.Since(start); d > time.Second {
			t.Errorf("Close after %d bytes took %v", read, d)
		}
		if n, err := r.Read(make([]byte, 10)); n != 0 || err == nil || errors.Is(err, ErrCorrupt) || err == io.EOF {
			t.Errorf("read after Close: %d, %v", n, err)
		}
		r.Close()
	}
	waitGoroutines(t, before)
	// Without Close.
	for _, in := range [][]byte{in, bad} {
		r, _ := newReader(detect.XZ, bytes.NewReader(in), twoXZ)
		io.Copy(io.Discard, r)
	}
	waitGoroutines(t, before)
}

// A reader that reads slowly holds the workers back: they decode no more
// than the blocks handed out, one more than there are workers, whatever
// the memory allows.
func TestXZParallelAhead(t *testing.T) {
	const block = 2 << 20
	data := bytes.Repeat([]byte("all work and no play makes a dull disk. "), 8<<20/40)
	in := buildXZ(t, xzCheckCRC64, split(data, block)...)
	r, err := newReader(detect.XZ, bytes.NewReader(in), twoXZ)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := io.ReadFull(r, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	p := r.(*reader).dec.(*xzDecoder).par
	made := func() int {
		p.pieces.mu.Lock()
		defer p.pieces.mu.Unlock()
		return p.pieces.made
	}
	for n := -1; n != made(); time.Sleep(100 * time.Millisecond) {
		n = made()
	}
	// The block being read, and the two after it, each whole.
	if want := 3 * block / xzPieceSize; made() > want {
		t.Errorf("%d pieces decoded ahead; want %d at most", made(), want)
	}
}

// Decoding allocates per block no more than the LZMA2 decoder's state,
// nothing near the size of the blocks or their dictionary: buffers,
// dictionaries and goroutines are reused. (The LZMA2 decoder allocates
// besides in proportion to its output.)
func TestXZParallelAllocs(t *testing.T) {
	const block, skip = 1 << 20, 3 << 20
	data := bytes.Repeat([]byte("all work and no play makes a dull disk. "), 10<<20/40)
	b := split(data, block)
	for i := range b {
		b[i].dict = block
	}
	in := buildXZ(t, xzCheckCRC64, b...)
	r, err := newReader(detect.XZ, hide{bytes.NewReader(in)}, twoXZ)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := io.ReadFull(r, make([]byte, skip)); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	n, err := io.CopyBuffer(io.Discard, r, make([]byte, 32<<10))
	runtime.ReadMemStats(&after)
	if err != nil || n != int64(len(data)-skip) {
		t.Fatalf("%d bytes, %v", n, err)
	}
	perBlock := (after.TotalAlloc - before.TotalAlloc) * block / uint64(n)
	if perBlock > block/4 {
		t.Errorf("%d bytes allocated per block of %d", perBlock, block)
	}
}

// XZParallel tells from the start of a file whether its first block is
// decoded on a worker.
func TestXZParallelOf(t *testing.T) {
	data := disk(t, 100_000)
	sized := buildXZ(t, xzCheckCRC64, split(data, 30_000)...)
	unsized := buildXZ(t, xzCheckCRC64, xzTestBlock{data: data, noSizes: true})
	huge := withBlockHeader(sized, xzHeaderLen, xzBlockHeader(0xc0, 0x80, 0x01, 0x80, 0x80, 0x80, 0x20, lzma2Filter, 1, 22))
	tests := []struct {
		name string
		head []byte
		want bool
		err  error
	}{
		{"sizes", sized[:1036], true, nil},
		{"no sizes", unsized[:100], false, nil},
		{"64 MiB", huge[:100], false, nil},
		{"no blocks", buildXZ(t, xzCheckCRC32), false, nil},
		{"short", sized[:20], false, io.ErrUnexpectedEOF},
		{"not xz", data[:100], false, ErrCorrupt},
		{"BCJ filter", withBlockHeader(sized, xzHeaderLen, xzBlockHeader(0, 0x04, 0, 0)), false, ErrUnsupported},
	}
	for _, tt := range tests {
		got, err := XZParallel(tt.head)
		if got != tt.want || !errors.Is(err, tt.err) || (err == nil) != (tt.err == nil) {
			t.Errorf("%s: %v, %v; want %v, %v", tt.name, got, err, tt.want, tt.err)
		}
	}
}
