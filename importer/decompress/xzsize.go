package decompress

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"math"
)

// ErrNoSize matches (under errors.Is) the errors of XZSize when it cannot
// tell the decompressed size cheaply: the file is not a well-formed .xz
// file, its index is too large, or reading it failed. The caller then has
// to find the size the slow way.
var ErrNoSize = errors.New("decompressed size unknown")

// The .xz format, https://tukaani.org/xz/xz-file-format.txt.
const (
	xzHeaderLen = 12
	xzFooterLen = 12
	xzMinStream = xzHeaderLen + 8 + xzFooterLen // with an empty index
	vliMax      = math.MaxInt64                 // largest value of a VLI
)

var (
	xzHeaderMagic = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
	xzFooterMagic = []byte("YZ")
)

// Costs XZSize accepts before it gives up with ErrNoSize.
const (
	xzWindow     = 64 << 10 // bytes read, at least, by a ReadAt
	xzIndexChunk = 4 << 20  // bytes of an index read at once, at most
	xzMaxIndex   = 16 << 20 // largest index (~2 million blocks)
	xzMaxReads   = 16       // ReadAt calls
)

// XZSize returns the decompressed size of the .xz file ra of size bytes,
// the sum of the uncompressed sizes in its streams' indexes, without
// decompressing anything. It walks back from the end of the file: stream
// padding, stream footer, index, then the stream's blocks to the previous
// stream, and checks the CRC32 of every footer and index, the structure of
// every index, and the header of every stream but one at offset 0 that
// would cost a read of its own: the decoder checks that one anyway.
//
// A file with one stream and an index of less than 64 KiB costs one ReadAt
// of 64 KiB at its end; every further stream or 4 MiB of index one more.
// XZSize gives up with an error matching ErrNoSize when the file is not
// well formed, when its index is larger than 16 MiB (about two million
// blocks) or when the walk would need more than 16 reads; it also wraps
// errors from ra.
//
// The size is what the index says. The decoder checks the index against
// the blocks as it decodes them, so a file whose index lies fails there.
func XZSize(ra io.ReaderAt, size int64) (int64, error) {
	return xzWalk(ra, size, nil)
}

// xzVisitor sees the parts of an .xz file as xzWalk finds them: the
// streams from the last to the first, the records of each in order,
// before its start is known.
type xzVisitor struct {
	record func(unpadded, uncompressed int64)
	stream func(start int64)
}

func noSize(format string, args ...any) error {
	return fmt.Errorf("%w: xz: %s", ErrNoSize, fmt.Sprintf(format, args...))
}

func xzWalk(ra io.ReaderAt, size int64, v *xzVisitor) (int64, error) {
	switch {
	case size < xzMinStream:
		return 0, noSize("file of %d bytes is too short", size)
	case size%4 != 0:
		return 0, noSize("file size %d is not a multiple of four", size)
	}
	t := &tailReader{ra: ra, size: size}
	var total int64
	for pos := size; pos > 0; {
		// Stream padding: zero words after a stream.
		end := pos
		for {
			w, err := t.bytes(pos-4, 4)
			if err != nil {
				return 0, err
			}
			if !bytes.Equal(w, []byte{0, 0, 0, 0}) {
				break
			}
			if pos -= 4; pos == 0 {
				return 0, noSize("%d bytes of zeros where a stream should end", end)
			}
		}
		if pos < xzMinStream {
			return 0, noSize("%d bytes before offset %d are too few for a stream", pos, pos)
		}
		b, err := t.bytes(pos-xzFooterLen, xzFooterLen)
		if err != nil {
			return 0, err
		}
		if err := parseXZFooter(b); err != nil {
			return 0, noSize("stream footer ending at %d: %v", pos, err)
		}
		flags := [2]byte{b[8], b[9]}
		indexSize := (int64(binary.LittleEndian.Uint32(b[4:8])) + 1) * 4
		if indexSize > xzMaxIndex {
			return 0, noSize("index of %d bytes is larger than the %d accepted", indexSize, xzMaxIndex)
		}
		indexStart := pos - xzFooterLen - indexSize
		if indexStart < xzHeaderLen {
			return 0, noSize("index of %d bytes does not fit before offset %d", indexSize, pos-xzFooterLen)
		}
		uncompressed, blocks, err := t.index(indexStart, indexSize, v)
		if err != nil {
			return 0, err
		}
		start := indexStart - blocks - xzHeaderLen
		if start < 0 {
			return 0, noSize("blocks of %d bytes do not fit before the index at %d", blocks, indexStart)
		}
		if start > 0 || t.has(0, xzHeaderLen) {
			// Reading the header of a stream other than the first
			// brings the end of the stream before it too.
			h, err := t.bytes(start, xzHeaderLen)
			if err != nil {
				return 0, err
			}
			if err := parseXZHeader(h, flags); err != nil {
				return 0, noSize("stream header at %d: %v", start, err)
			}
		}
		if v != nil && v.stream != nil {
			v.stream(start)
		}
		if uncompressed > vliMax-total {
			return 0, noSize("total size overflows")
		}
		total += uncompressed
		pos = start
	}
	return total, nil
}

// parseXZFooter checks a stream footer.
func parseXZFooter(b []byte) error {
	switch {
	case !bytes.Equal(b[10:12], xzFooterMagic):
		return errors.New("no footer magic")
	case crc32.ChecksumIEEE(b[4:10]) != binary.LittleEndian.Uint32(b[0:4]):
		return errors.New("footer CRC32 mismatch")
	case b[8] != 0 || b[9]&0xf0 != 0:
		return fmt.Errorf("reserved stream flags %#x %#x set", b[8], b[9])
	}
	return nil
}

// parseXZHeader checks a stream header against the flags of its footer.
func parseXZHeader(b []byte, flags [2]byte) error {
	switch {
	case !bytes.Equal(b[:6], xzHeaderMagic):
		return errors.New("no header magic")
	case crc32.ChecksumIEEE(b[6:8]) != binary.LittleEndian.Uint32(b[8:12]):
		return errors.New("header CRC32 mismatch")
	case b[6] != flags[0] || b[7] != flags[1]:
		return errors.New("header and footer stream flags differ")
	}
	return nil
}

// index parses the index of size bytes at start and returns the sums of
// its records' uncompressed sizes and of their blocks' sizes.
func (t *tailReader) index(start, size int64, v *xzVisitor) (uncompressed, blocks int64, err error) {
	r := &indexReader{t: t, off: start, end: start + size - 4, crc: crc32.NewIEEE()}
	bad := func(format string, args ...any) error {
		return noSize("index at %d: %s", start, fmt.Sprintf(format, args...))
	}
	if b, err := r.ReadByte(); err != nil {
		return 0, 0, err
	} else if b != 0 {
		return 0, 0, bad("no index indicator")
	}
	count, err := r.vli()
	if err != nil {
		return 0, 0, err
	}
	if count > uint64(size)/2 { // a record takes two bytes at least
		return 0, 0, bad("%d records do not fit in %d bytes", count, size)
	}
	for range count {
		unpadded, err := r.vli()
		if err != nil {
			return 0, 0, err
		}
		uncomp, err := r.vli()
		if err != nil {
			return 0, 0, err
		}
		// An unpadded size counts a block header (8 bytes at least)
		// and a check but not the block padding.
		if unpadded < 5 || unpadded > vliMax&^3 {
			return 0, 0, bad("unpadded size %d out of range", unpadded)
		}
		padded := int64(unpadded+3) &^ 3
		if padded > t.size-blocks {
			return 0, 0, bad("blocks larger than the file")
		}
		blocks += padded
		if int64(uncomp) > vliMax-uncompressed {
			return 0, 0, bad("uncompressed sizes overflow")
		}
		uncompressed += int64(uncomp)
		if v != nil && v.record != nil {
			v.record(int64(unpadded), int64(uncomp))
		}
	}
	for (r.off-start)%4 != 0 {
		if b, err := r.ReadByte(); err != nil {
			return 0, 0, err
		} else if b != 0 {
			return 0, 0, bad("non-zero index padding")
		}
	}
	if r.off != r.end {
		return 0, 0, bad("records end at %d, the index at %d", r.off, r.end+4)
	}
	sum, err := t.bytes(r.end, 4)
	if err != nil {
		return 0, 0, err
	}
	if r.crc.Sum32() != binary.LittleEndian.Uint32(sum) {
		return 0, 0, bad("CRC32 mismatch")
	}
	return uncompressed, blocks, nil
}

// indexReader reads the bytes of an index before its CRC32, a chunk at a
// time, and computes their CRC32.
type indexReader struct {
	t        *tailReader
	off, end int64  // offsets of the next byte and of the CRC32
	buf      []byte // the bytes at off
	crc      hash.Hash32
}

var errIndexEnd = errors.New("records run past the end of the index")

func (r *indexReader) ReadByte() (byte, error) {
	if len(r.buf) == 0 {
		n := min(r.end-r.off, xzIndexChunk)
		if n <= 0 {
			return 0, noSize("index at offset %d: %v", r.end, errIndexEnd)
		}
		// The last chunk brings the CRC32 after it into the window.
		extra := 0
		if r.off+n == r.end {
			extra = 4
		}
		b, err := r.t.bytes(r.off, int(n)+extra)
		if err != nil {
			return 0, err
		}
		b = b[:n]
		r.crc.Write(b)
		r.buf = b
	}
	c := r.buf[0]
	r.buf = r.buf[1:]
	r.off++
	return c, nil
}

// vli reads a variable-length integer of the .xz format.
func (r *indexReader) vli() (uint64, error) {
	var x uint64
	for i := 0; i < 9; i++ {
		b, err := r.ReadByte()
		if err != nil {
			return 0, err
		}
		x |= uint64(b&0x7f) << (7 * i)
		if b&0x80 == 0 {
			if b == 0 && i > 0 {
				return 0, noSize("index: integer not minimally encoded at %d", r.off-1)
			}
			return x, nil
		}
	}
	return 0, noSize("index: integer longer than 9 bytes at %d", r.off)
}

// decodeVLI decodes the variable-length integer at the start of b and
// returns it and its length, or 0, 0 if b does not start with one.
func decodeVLI(b []byte) (uint64, int) {
	var x uint64
	for i := 0; i < 9 && i < len(b); i++ {
		x |= uint64(b[i]&0x7f) << (7 * i)
		if b[i]&0x80 == 0 {
			if b[i] == 0 && i > 0 {
				return 0, 0
			}
			return x, i + 1
		}
	}
	return 0, 0
}

// tailReader reads a file mostly from its end backwards, through a window
// of the bytes it last read, and counts its reads.
type tailReader struct {
	ra    io.ReaderAt
	size  int64
	buf   []byte // the bytes at off
	off   int64
	reads int
}

// has reports whether the bytes at off..off+n are in the window.
func (t *tailReader) has(off int64, n int) bool {
	return off >= t.off && off+int64(n) <= t.off+int64(len(t.buf))
}

// bytes returns the n bytes at off, which must lie within the file. If
// they are not in the window it reads a new one: at least xzWindow bytes
// ending where they end, as the walk goes backwards.
func (t *tailReader) bytes(off int64, n int) ([]byte, error) {
	if off < 0 || off+int64(n) > t.size {
		return nil, noSize("read of %d bytes at %d is outside the file", n, off)
	}
	if !t.has(off, n) {
		if t.reads == xzMaxReads {
			return nil, noSize("more than %d reads needed", xzMaxReads)
		}
		t.reads++
		end := off + int64(n)
		start := max(0, min(off, end-xzWindow))
		buf := make([]byte, end-start)
		if m, err := t.ra.ReadAt(buf, start); m < len(buf) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("%w: xz: reading %d bytes at %d: %w", ErrNoSize, len(buf), start, err)
		}
		t.buf, t.off = buf, start
	}
	return t.buf[off-t.off : off-t.off+int64(n)], nil
}
