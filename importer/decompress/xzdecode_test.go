package decompress

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"runtime"
	"slices"
	"testing"

	"github.com/ulikunitz/xz"

	"github.com/diskimporter/diskimporter/importer/detect"
)

// maxTestAlloc is how much decoding a small file with a hostile block
// header may allocate: the dictionaries those headers ask for are 768 MiB
// to 4 GiB.
const maxTestAlloc = 64 << 20

// xzBlock is a block of an .xz file, as its stream's index describes it.
type xzBlock struct {
	off          int // of its header
	unpadded     int // header, compressed data and check
	padded       int // with the block padding
	uncompressed int64
}

// xzBlocksOf lists the blocks of the .xz file b in order. It finds them
// from the indexes (with XZSize's walk), not as the decoder does.
func xzBlocksOf(tb testing.TB, b []byte) []xzBlock {
	tb.Helper()
	var recs []xzRecord
	var blocks []xzBlock
	_, err := xzWalk(bytes.NewReader(b), int64(len(b)), &xzVisitor{
		record: func(unpadded, uncompressed int64) { recs = append(recs, xzRecord{unpadded, uncompressed}) },
		stream: func(start int64) {
			off := int(start) + xzHeaderLen
			var s []xzBlock
			for _, r := range recs {
				padded := int(r.unpadded+3) &^ 3
				s = append(s, xzBlock{off, int(r.unpadded), padded, r.uncompressed})
				off += padded
			}
			blocks = append(s, blocks...) // the walk goes from the last stream
			recs = recs[:0]
		},
	})
	if err != nil {
		tb.Fatal(err)
	}
	return blocks
}

// xzBlockHeader returns a block header of the given flags and fields
// (sizes and filter flags), padded, with its CRC32.
func xzBlockHeader(flags byte, fields ...byte) []byte {
	h := append([]byte{0, flags}, fields...)
	for len(h)%4 != 0 {
		h = append(h, 0)
	}
	h[0] = byte(len(h) / 4)
	return binary.LittleEndian.AppendUint32(h, crc32.ChecksumIEEE(h))
}

// fixCRC32 recomputes the CRC32 at the end of a block header.
func fixCRC32(h []byte) []byte {
	binary.LittleEndian.PutUint32(h[len(h)-4:], crc32.ChecksumIEEE(h[:len(h)-4]))
	return h
}

// fixStreamHeader recomputes the CRC32 of the stream header at the start
// of b.
func fixStreamHeader(b []byte) {
	binary.LittleEndian.PutUint32(b[8:], crc32.ChecksumIEEE(b[6:8]))
}

// withBlockHeader returns a copy of in with the header of the block at
// off replaced by h.
func withBlockHeader(in []byte, off int, h []byte) []byte {
	return slices.Concat(in[:off], h, in[off+(int(in[off])+1)*4:])
}

// lzma2Header returns a block header for LZMA2 with the properties byte
// props, as the xz package writes it.
func lzma2Header(props byte) []byte { return xzBlockHeader(0, lzma2Filter, 1, props) }

// decodeXZAlloc decodes in as xz and returns what it decoded, how it
// ended and how many bytes the process allocated meanwhile.
func decodeXZAlloc(in []byte) ([]byte, error, uint64) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	got, err := decode(detect.XZ, in)
	runtime.ReadMemStats(&after)
	return got, err, after.TotalAlloc - before.TotalAlloc
}

// checkErrorClass fails unless err matches want, one of ErrCorrupt and
// ErrUnsupported, and not the other.
func checkErrorClass(t *testing.T, err, want error) {
	t.Helper()
	other := ErrCorrupt
	if want == ErrCorrupt {
		other = ErrUnsupported
	}
	if !errors.Is(err, want) || errors.Is(err, other) {
		t.Fatalf("error %v; want %v", err, want)
	}
}

// Every block header is checked, in every stream, before the decoder
// allocates the dictionary it asks for: the blocks before it decode, and
// the decoder fails there with ErrUnsupported without allocating it.
func TestXZBlockLimits(t *testing.T) {
	data := disk(t, smallDisk)
	small := disk(t, 3000)
	multi := xzCompress(t, xz.WriterConfig{DictCap: 1 << 16, BlockSize: 40_000, CheckSum: xz.CRC32}, data)
	second := xzCompress(t, xz.WriterConfig{DictCap: 1 << 12, BlockSize: 1000}, small)
	twoStreams := slices.Concat(multi, make([]byte, 8), second)
	tests := []struct {
		name   string
		in     []byte
		want   []byte // decoded
		block  int    // index of the block whose header is replaced
		header []byte
	}{
		{"4 GiB dictionary in the second block", multi, data, 1, lzma2Header(40)},
		{"1 GiB dictionary in the last block", multi, data, -1, lzma2Header(36)},
		{"768 MiB dictionary in the third block", multi, data, 2, lzma2Header(35)},
		{"4 GiB dictionary in the second stream", twoStreams, slices.Concat(data, small), -2, lzma2Header(40)},
		{"sizes in the header, then a 4 GiB dictionary", multi, data, 3,
			xzBlockHeader(0xc0, 0x80, 0x80, 0x01, 0xa0, 0x9c, 0x01, lzma2Filter, 1, 40)},
		{"x86 BCJ filter in a later block", multi, data, 2, xzBlockHeader(0, 0x04, 0, 0)},
		{"delta before LZMA2 in a later block", multi, data, 1, xzBlockHeader(1, 0x03, 1, 0, lzma2Filter, 1, 0)},
		{"a filter ID of two bytes", twoStreams, slices.Concat(data, small), -1, xzBlockHeader(0, 0x80, 0x01, 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			blocks := xzBlocksOf(t, tt.in)
			i := (tt.block + len(blocks)) % len(blocks)
			in := withBlockHeader(tt.in, blocks[i].off, tt.header)
			got, err, alloc := decodeXZAlloc(in)
			checkErrorClass(t, err, ErrUnsupported)
			if alloc > maxTestAlloc {
				t.Errorf("allocated %d MiB", alloc>>20)
			}
			var before int64
			for _, b := range blocks[:i] {
				before += b.uncompressed
			}
			if !bytes.Equal(got, tt.want[:before]) {
				t.Errorf("decoded %d bytes; want the %d of the blocks before", len(got), before)
			}
		})
	}
}

// hideInChunk returns the .xz file in, whose first block holds a single
// LZMA chunk, with hidden added to the end of the chunk's packed data, and
// the chunk's packed size to match. A decoder that reads the next chunk
// header where the range decoder stops, as the xz package does, reads
// hidden; one that follows the chunks by their sizes skips it.
func hideInChunk(tb testing.TB, in []byte, hidden []byte) []byte {
	tb.Helper()
	c := xzHeaderLen + (int(in[xzHeaderLen])+1)*4
	if in[c] < 0xe0 {
		tb.Fatalf("chunk control %#x: not LZMA with a dictionary reset", in[c])
	}
	packed := int(binary.BigEndian.Uint16(in[c+3:])) + 1
	end := c + 6 + packed
	if in[end] != 0 {
		tb.Fatalf("more than one chunk")
	}
	out := slices.Concat(in[:end], hidden, in[end:])
	binary.BigEndian.PutUint16(out[c+3:], uint16(packed+len(hidden)-1))
	return out
}

// hiddenBlock returns what hideInChunk should hide to end the first block
// of a stream whose check is CRC32 and whose first block decodes to
// data, to a decoder that stops at the end of the range coder's data
// (which is the end of the chunk in a file as the xz package writes it),
// and then start a block with the given header, holding an uncompressed
// chunk.
func hiddenBlock(in, data []byte, header []byte) []byte {
	c := xzHeaderLen + (int(in[xzHeaderLen])+1)*4
	packed := int(binary.BigEndian.Uint16(in[c+3:])) + 1
	h := []byte{0} // the end marker
	for (c-xzHeaderLen+6+packed+len(h))%4 != 0 {
		h = append(h, 0)
	}
	h = binary.LittleEndian.AppendUint32(h, crc32.ChecksumIEEE(data))
	h = append(h, header...)
	return append(h, 0x01, 0x00, 0x00, 'x', 0x00)
}

// The decoder follows the LZMA2 chunks by their sizes, as the block
// headers were checked: a decoder that stops where the range coder does
// fails the block, and cannot read a block hidden in a chunk.
func TestXZHiddenInChunk(t *testing.T) {
	data := disk(t, 2000)
	in := xzCompress(t, xz.WriterConfig{DictCap: 1 << 12, CheckSum: xz.CRC32}, data)
	tests := []struct {
		name   string
		hidden []byte
	}{
		{"a block with a 1 GiB dictionary", hiddenBlock(in, data, lzma2Header(36))},
		{"a block with a 4 KiB dictionary", hiddenBlock(in, data, lzma2Header(0))},
		{"an end marker", []byte{0}},
		{"an uncompressed chunk", []byte{0x02, 0x00, 0x00, 'x'}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err, alloc := decodeXZAlloc(hideInChunk(t, in, tt.hidden))
			checkErrorClass(t, err, ErrCorrupt)
			if alloc > maxTestAlloc {
				t.Errorf("allocated %d MiB", alloc>>20)
			}
		})
	}
}

// The container is checked: each damage to it is found, as ErrCorrupt
// unless the input may be valid.
func TestXZStructure(t *testing.T) {
	data := disk(t, smallDisk)
	in := xzCompress(t, xz.WriterConfig{DictCap: 1 << 16, BlockSize: 40_000, CheckSum: xz.CRC32}, data)
	blocks := xzBlocksOf(t, in)
	if len(blocks) < 3 {
		t.Fatalf("%d blocks", len(blocks))
	}
	b1 := blocks[1]
	props := in[b1.off+4]
	padded := -1 // a block with block padding
	for i, b := range blocks {
		if b.padded > b.unpadded {
			padded = i
		}
	}
	if padded < 0 {
		t.Fatal("no block with block padding")
	}
	footer := len(in) - xzFooterLen
	indexStart := blocks[len(blocks)-1].off + blocks[len(blocks)-1].padded
	withIndex := func(edit func([]xzRecord) []xzRecord) []byte {
		var recs []xzRecord
		for _, b := range blocks {
			recs = append(recs, xzRecord{int64(b.unpadded), b.uncompressed})
		}
		_, _, tail := fakeXZParts(edit(recs)) // CRC32, as in
		return slices.Concat(in[:indexStart], tail)
	}
	badPadding := lzma2Header(props)
	badPadding[6] = 1
	fixCRC32(badPadding)
	edit := func(f func(b []byte)) []byte {
		b := slices.Clone(in)
		f(b)
		return b
	}
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"stream header CRC32", edit(func(b []byte) { b[8] ^= 1 }), ErrCorrupt},
		{"reserved stream flags", edit(func(b []byte) { b[6] = 1; fixStreamHeader(b) }), ErrCorrupt},
		{"check type 0x02", edit(func(b []byte) { b[7] = 2; fixStreamHeader(b) }), ErrUnsupported},
		{"block header CRC32", edit(func(b []byte) { b[b1.off+4] ^= 1 }), ErrCorrupt},
		{"reserved block flags", withBlockHeader(in, b1.off, xzBlockHeader(0x08, lzma2Filter, 1, props)), ErrCorrupt},
		{"non-zero block header padding", withBlockHeader(in, b1.off, badPadding), ErrCorrupt},
		{"LZMA2 properties 41", withBlockHeader(in, b1.off, lzma2Header(41)), ErrCorrupt},
		{"LZMA2 properties of two bytes", withBlockHeader(in, b1.off, xzBlockHeader(0, lzma2Filter, 2, props, 0)), ErrCorrupt},
		{"LZMA2 before another filter", withBlockHeader(in, b1.off, xzBlockHeader(1, lzma2Filter, 1, props, 0x03, 1, 0)), ErrCorrupt},
		{"compressed size 0", withBlockHeader(in, b1.off, xzBlockHeader(0x40, 0, lzma2Filter, 1, props)), ErrCorrupt},
		{"wrong compressed size", withBlockHeader(in, b1.off, xzBlockHeader(0x40, 5, lzma2Filter, 1, props)), ErrCorrupt},
		{"wrong uncompressed size", withBlockHeader(in, b1.off, xzBlockHeader(0x80, 5, lzma2Filter, 1, props)), ErrCorrupt},
		{"LZMA2 control byte 0x03", edit(func(b []byte) { b[b1.off+12] = 0x03 }), ErrCorrupt},
		{"block padding", edit(func(b []byte) { b[blocks[padded].off+blocks[padded].unpadded-4] = 1 }), ErrCorrupt},
		{"block check", edit(func(b []byte) { b[b1.off+b1.padded-1] ^= 1 }), ErrCorrupt},
		{"index with a record too few", withIndex(func(r []xzRecord) []xzRecord { return r[1:] }), ErrCorrupt},
		{"index with a wrong size", withIndex(func(r []xzRecord) []xzRecord { r[1].uncompressed++; return r }), ErrCorrupt},
		{"index with records swapped", withIndex(func(r []xzRecord) []xzRecord { r[0], r[2] = r[2], r[0]; return r }), ErrCorrupt},
		{"index CRC32", edit(func(b []byte) { b[footer-1] ^= 1 }), ErrCorrupt},
		{"footer CRC32", edit(func(b []byte) { b[footer] ^= 1 }), ErrCorrupt},
		{"footer flags", edit(func(b []byte) {
			b[footer+9] = 4
			binary.LittleEndian.PutUint32(b[footer:], crc32.ChecksumIEEE(b[footer+4:footer+10]))
		}), ErrCorrupt},
		{"footer index size", edit(func(b []byte) {
			b[footer+4]++
			binary.LittleEndian.PutUint32(b[footer:], crc32.ChecksumIEEE(b[footer+4:footer+10]))
		}), ErrCorrupt},
		{"stream padding of two bytes", slices.Concat(in, []byte{0, 0}), ErrCorrupt},
		{"a stream of padding only", slices.Concat(make([]byte, 8), in), ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decode(detect.XZ, tt.in)
			checkErrorClass(t, err, tt.want)
			if !bytes.HasPrefix(data, got) {
				t.Errorf("decoded %d bytes that are not the file's", len(got))
			}
		})
	}
}

func TestLZMA2Dict(t *testing.T) {
	for props, want := range map[byte]uint64{0: 4 << 10, 1: 6 << 10, 2: 8 << 10, 19: 3 << 20, 34: MaxXZDict, 35: 768 << 20, 39: 3 << 30, 40: 1<<32 - 1} {
		if got := lzma2Dict(props); got != want {
			t.Errorf("lzma2Dict(%d) = %d, want %d", props, got, want)
		}
	}
}
