package decompress

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"hash/crc64"
	"io"

	"github.com/ulikunitz/xz/lzma"
)

// xzDecoder decodes an .xz file, https://tukaani.org/xz/xz-file-format.txt:
// it parses the container itself and hands each block's LZMA2 data, and
// nothing else, to an lzma.Reader2 whose dictionary it sizes, once it has
// checked the block header: a filter other than LZMA2 or a dictionary
// larger than MaxXZDict fails the read with ErrUnsupported, in any block of
// any stream, before the decoder exists.
//
// It does not use the xz package's reader, which allocates the dictionary
// every block header asks for, up to 4 GiB, and parses the LZMA2 chunks
// more loosely than the format allows: it reads the next chunk header where
// an LZMA chunk's range coder stops, even before the end of the chunk's
// packed size, so that a chunk can hide a whole block, header included,
// from a check that follows the format alongside that reader. Here the
// LZMA2 decoder reads through lzma2Data, which follows the chunks by their
// sizes and ends the data after the end marker whatever the decoder makes
// of it: a decoder out of step with the chunks fails the block.
//
// Whatever does not parse as the format is corrupt: the read fails there.
// There is no other parser to leave it to, and the input is not a valid
// .xz file, which xz -d refuses too. Every stream's blocks are checked
// against their check fields, the index and the footer, and the input must
// end after a stream and its padding.
type xzDecoder struct {
	in *bufio.Reader

	// The current stream.
	checkType byte
	blocks    xzRecords // the blocks decoded so far
	between   bool      // after the footer: stream padding, another stream or the end

	// The current block, while lz is not nil.
	lz               io.Reader
	data             lzma2Data
	check            hash.Hash // nil for no check
	headerLen        int64
	compressed, size int64 // from the block header, or -1
	out              int64 // bytes decoded

	buf [1024]byte // a block header, or a block's padding and check
}

// Properties of the .xz format.
const (
	lzma2Filter    = 0x21
	xzCheckNone    = 0x00
	xzCheckCRC32   = 0x01
	xzCheckCRC64   = 0x04
	xzCheckSHA256  = 0x0a
	xzBlockFlagRes = 0x3c // reserved bits of the block flags
)

var crc64Table = crc64.MakeTable(crc64.ECMA)

func xzUnsupported(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUnsupported, fmt.Sprintf(format, args...))
}

// truncated turns the io.EOF of an input that ends inside a structure
// into io.ErrUnexpectedEOF.
func truncated(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// newXZDecoder reads the header of the first stream of in.
func newXZDecoder(in *bufio.Reader) (*xzDecoder, error) {
	x := &xzDecoder{in: in}
	var h [xzHeaderLen]byte
	if _, err := io.ReadFull(in, h[:]); err != nil {
		return nil, err
	}
	if err := x.streamHeader(h[:]); err != nil {
		return nil, err
	}
	return x, nil
}

func (x *xzDecoder) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if x.lz == nil {
			if err := x.next(); err != nil {
				return 0, err
			}
			continue
		}
		n, err := x.lz.Read(p)
		if x.check != nil {
			x.check.Write(p[:n])
		}
		x.out += int64(n)
		switch {
		case x.size >= 0 && x.out > x.size:
			return n, fmt.Errorf("block decodes to more than the %d bytes its header says", x.size)
		case x.compressed >= 0 && x.data.n > x.compressed:
			return n, fmt.Errorf("block has more than the %d compressed bytes its header says", x.compressed)
		case err == io.EOF:
			x.lz = nil
			if err := x.endBlock(); err != nil || n > 0 {
				return n, err
			}
		case err != nil:
			return n, err
		default:
			return n, nil
		}
	}
}

// next reads what follows a stream header or a block: a block header, or
// the index, the footer, stream padding and the next stream's header. It
// returns io.EOF at the end of the input after a stream and its padding.
func (x *xzDecoder) next() error {
	for {
		if x.between {
			var w [4]byte
			if n, err := io.ReadFull(x.in, w[:]); err != nil {
				if n == 0 && err == io.EOF {
					return io.EOF
				}
				return fmt.Errorf("stream padding: %w", err)
			}
			if w == [4]byte{} {
				continue
			}
			var h [xzHeaderLen]byte
			copy(h[:], w[:])
			if _, err := io.ReadFull(x.in, h[4:]); err != nil {
				return fmt.Errorf("stream header: %w", truncated(err))
			}
			if err := x.streamHeader(h[:]); err != nil {
				return err
			}
			continue
		}
		b, err := x.in.ReadByte()
		if err != nil {
			return fmt.Errorf("block header or index: %w", truncated(err))
		}
		if b == 0 {
			if err := x.index(); err != nil {
				return err
			}
			x.between = true
			continue
		}
		return x.blockHeader(b)
	}
}

// streamHeader starts the stream whose header is h.
func (x *xzDecoder) streamHeader(h []byte) error {
	switch {
	case !bytes.Equal(h[:6], xzHeaderMagic):
		return errors.New("no stream header magic")
	case crc32.ChecksumIEEE(h[6:8]) != binary.LittleEndian.Uint32(h[8:12]):
		return errors.New("stream header CRC32 mismatch")
	case h[6] != 0 || h[7]&0xf0 != 0:
		return fmt.Errorf("reserved stream flags %#x %#x set", h[6], h[7])
	}
	switch t := h[7]; t {
	case xzCheckNone, xzCheckCRC32, xzCheckCRC64, xzCheckSHA256:
		x.checkType = t
	default:
		return xzUnsupported("check type %#x (only none, CRC32, CRC64 and SHA-256 are supported)", t)
	}
	x.blocks = xzRecords{}
	x.between = false
	return nil
}

// checkLen returns the size of the check field of the current stream.
func (x *xzDecoder) checkLen() int {
	switch x.checkType {
	case xzCheckCRC32:
		return 4
	case xzCheckCRC64:
		return 8
	case xzCheckSHA256:
		return 32
	}
	return 0
}

func (x *xzDecoder) newCheck() hash.Hash {
	switch x.checkType {
	case xzCheckCRC32:
		return crc32.NewIEEE()
	case xzCheckCRC64:
		return crc64.New(crc64Table)
	case xzCheckSHA256:
		return sha256.New()
	}
	return nil
}

// blockHeader reads the header of a block, whose first byte is size, and
// starts decoding the block. It refuses, before the LZMA2 decoder exists,
// a block that needs a filter other than LZMA2 or a dictionary larger than
// MaxXZDict.
func (x *xzDecoder) blockHeader(size byte) error {
	n := (int(size) + 1) * 4
	h := x.buf[:n]
	h[0] = size
	if _, err := io.ReadFull(x.in, h[1:]); err != nil {
		return fmt.Errorf("block header: %w", truncated(err))
	}
	if crc32.ChecksumIEEE(h[:n-4]) != binary.LittleEndian.Uint32(h[n-4:]) {
		return errors.New("block header CRC32 mismatch")
	}
	flags := h[1]
	if flags&xzBlockFlagRes != 0 {
		return fmt.Errorf("reserved block flags %#x set", flags)
	}
	p := h[2 : n-4]
	sizes := [2]int64{-1, -1} // compressed, uncompressed
	for i, bit := range []byte{0x40, 0x80} {
		if flags&bit != 0 {
			v, k := decodeVLI(p)
			if k == 0 || i == 0 && v == 0 {
				return errors.New("bad size in block header")
			}
			sizes[i], p = int64(v), p[k:]
		}
	}
	var props byte
	for i, count := 0, int(flags&3)+1; i < count; i++ {
		id, k := decodeVLI(p)
		if k == 0 {
			return errors.New("bad filter ID in block header")
		}
		p = p[k:]
		size, k := decodeVLI(p)
		if k == 0 || size > uint64(len(p)-k) {
			return errors.New("bad filter properties in block header")
		}
		prop := p[k : k+int(size)]
		p = p[k+int(size):]
		switch {
		case id != lzma2Filter:
			return xzUnsupported("filter %#x (only LZMA2 is supported)", id)
		case i != count-1:
			return errors.New("LZMA2 filter not last")
		case size != 1 || prop[0] > 40:
			return errors.New("bad LZMA2 properties")
		}
		props = prop[0]
	}
	if !allZero(p) {
		return errors.New("non-zero block header padding")
	}
	dict := lzma2Dict(props)
	if dict > MaxXZDict {
		return xzUnsupported("dictionary of %d MiB, more than the %d MiB allowed", dict>>20, MaxXZDict>>20)
	}
	x.data = lzma2Data{in: x.in}
	lz, err := lzma.Reader2Config{DictCap: int(dict)}.NewReader2(&x.data)
	if err != nil {
		return err
	}
	x.lz = lz
	x.check = x.newCheck()
	x.headerLen = int64(n)
	x.compressed, x.size = sizes[0], sizes[1]
	x.out = 0
	return nil
}

// lzma2Dict returns the dictionary size that the LZMA2 properties byte
// b, at most 40, stands for.
func lzma2Dict(b byte) uint64 {
	if b == 40 {
		return 1<<32 - 1
	}
	return uint64(2|b&1) << (b/2 + 11)
}

// endBlock checks the end of the current block, whose LZMA2 decoder has
// reported its end: the sizes, the block padding and the check.
func (x *xzDecoder) endBlock() error {
	if !x.data.done {
		return errors.New("LZMA2 data ends before its end marker")
	}
	comp := x.data.n
	if x.compressed >= 0 && comp != x.compressed {
		return fmt.Errorf("block of %d compressed bytes, its header says %d", comp, x.compressed)
	}
	if x.size >= 0 && x.out != x.size {
		return fmt.Errorf("block decodes to %d bytes, its header says %d", x.out, x.size)
	}
	pad := int(-(x.headerLen + comp) & 3)
	cl := x.checkLen()
	b := x.buf[:pad+cl]
	if _, err := io.ReadFull(x.in, b); err != nil {
		return fmt.Errorf("block padding and check: %w", truncated(err))
	}
	if !allZero(b[:pad]) {
		return errors.New("non-zero block padding")
	}
	if x.check != nil {
		var sum []byte
		switch h := x.check.(type) {
		case hash.Hash32:
			sum = binary.LittleEndian.AppendUint32(x.buf[pad+cl:pad+cl], h.Sum32())
		case hash.Hash64:
			sum = binary.LittleEndian.AppendUint64(x.buf[pad+cl:pad+cl], h.Sum64())
		default:
			sum = h.Sum(x.buf[pad+cl : pad+cl])
		}
		if !bytes.Equal(sum, b[pad:]) {
			return errors.New("block check mismatch")
		}
	}
	x.blocks.add(uint64(x.headerLen+comp)+uint64(cl), uint64(x.out))
	return nil
}

// index reads the index of the current stream, after its indicator, and
// the stream footer, and checks them against the stream's blocks.
func (x *xzDecoder) index() error {
	crc := crc32.ChecksumIEEE([]byte{0}) // of the index so far
	size := int64(1)
	readByte := func() (byte, error) {
		b, err := x.in.ReadByte()
		if err != nil {
			return 0, fmt.Errorf("index: %w", truncated(err))
		}
		x.buf[0] = b
		crc = crc32.Update(crc, crc32.IEEETable, x.buf[:1])
		size++
		return b, nil
	}
	vli := func() (uint64, error) {
		var v uint64
		for i := 0; i < 9; i++ {
			b, err := readByte()
			if err != nil {
				return 0, err
			}
			v |= uint64(b&0x7f) << (7 * i)
			if b&0x80 == 0 {
				if b == 0 && i > 0 {
					return 0, errors.New("index: integer not minimally encoded")
				}
				return v, nil
			}
		}
		return 0, errors.New("index: integer longer than 9 bytes")
	}
	count, err := vli()
	if err != nil {
		return err
	}
	if count != x.blocks.n {
		return fmt.Errorf("index of %d records for %d blocks", count, x.blocks.n)
	}
	var records xzRecords
	for range count {
		unpadded, err := vli()
		if err != nil {
			return err
		}
		uncompressed, err := vli()
		if err != nil {
			return err
		}
		records.add(unpadded, uncompressed)
	}
	for size%4 != 0 {
		if b, err := readByte(); err != nil {
			return err
		} else if b != 0 {
			return errors.New("non-zero index padding")
		}
	}
	if !records.equal(&x.blocks) {
		return errors.New("index does not match the blocks")
	}
	var b [4 + xzFooterLen]byte
	if _, err := io.ReadFull(x.in, b[:]); err != nil {
		return fmt.Errorf("index and stream footer: %w", truncated(err))
	}
	if crc != binary.LittleEndian.Uint32(b[:4]) {
		return errors.New("index CRC32 mismatch")
	}
	size += 4
	f := b[4:]
	if err := parseXZFooter(f); err != nil {
		return fmt.Errorf("stream footer: %v", err)
	}
	if (int64(binary.LittleEndian.Uint32(f[4:8]))+1)*4 != size {
		return errors.New("stream footer gives the wrong index size")
	}
	if f[8] != 0 || f[9] != x.checkType {
		return errors.New("stream header and footer flags differ")
	}
	return nil
}

// xzRecords sums up the records of a stream's blocks, or those of its
// index, so that the two can be compared without keeping them, as
// liblzma does.
type xzRecords struct {
	n   uint64
	sum hash.Hash // SHA-256 of the records
}

func (r *xzRecords) add(unpadded, uncompressed uint64) {
	if r.sum == nil {
		r.sum = sha256.New()
	}
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], unpadded)
	binary.LittleEndian.PutUint64(b[8:], uncompressed)
	r.sum.Write(b[:])
	r.n++
}

func (r *xzRecords) equal(o *xzRecords) bool {
	return r.n == o.n && (r.n == 0 || bytes.Equal(r.sum.Sum(nil), o.sum.Sum(nil)))
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// lzma2Data reads the LZMA2 data of a block for its decoder: it follows
// the chunks, skipping the data of each by its size, and ends after the
// end marker. The decoder reads an LZMA chunk's packed data a byte at a
// time.
type lzma2Data struct {
	in   *bufio.Reader
	n    int64 // bytes read
	done bool  // the end marker has been read

	state chunkState
	left  int     // bytes left in the current chunk header or data
	head  [5]byte // the chunk header after the control byte
	have  int     // bytes of it read
	lzma  bool    // the chunk is an LZMA chunk
}

type chunkState byte

const (
	chunkControl chunkState = iota
	chunkHeader
	chunkData
)

var errLZMA2Overrun = errors.New("the decoder reads past the LZMA2 end marker")

func (d *lzma2Data) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	switch d.state {
	case chunkData:
		k, err := d.read(p[:min(len(p), d.left)])
		d.left -= k
		if d.left == 0 {
			d.state = chunkControl
		}
		return k, err
	case chunkHeader:
		k, err := d.read(p[:min(len(p), d.left)])
		copy(d.head[d.have:], p[:k])
		d.have += k
		if d.left -= k; d.left == 0 {
			h := d.head[:]
			if d.lzma {
				d.left = int(binary.BigEndian.Uint16(h[2:4])) + 1
			} else {
				d.left = int(binary.BigEndian.Uint16(h[0:2])) + 1
			}
			d.state = chunkData
		}
		return k, err
	}
	if d.done {
		return 0, errLZMA2Overrun
	}
	k, err := d.read(p[:1])
	if k == 0 {
		return 0, err
	}
	switch c := p[0]; {
	case c == 0x00:
		d.done = true
		return 1, nil
	case c == 0x01 || c == 0x02:
		d.lzma, d.left = false, 2
	case c >= 0x80:
		d.lzma, d.left = true, 4
		if c >= 0xc0 {
			d.left = 5
		}
	default:
		return 0, fmt.Errorf("invalid LZMA2 chunk control byte %#x", c)
	}
	d.state, d.have = chunkHeader, 0
	return 1, nil
}

// read reads at least one byte into p, unless the input fails or ends.
func (d *lzma2Data) read(p []byte) (int, error) {
	if len(p) == 1 {
		b, err := d.in.ReadByte()
		if err != nil {
			return 0, fmt.Errorf("LZMA2 data: %w", truncated(err))
		}
		p[0] = b
		d.n++
		return 1, nil
	}
	k, err := d.in.Read(p)
	if k == 0 {
		if err == nil {
			return d.read(p[:1])
		}
		return 0, fmt.Errorf("LZMA2 data: %w", truncated(err))
	}
	d.n += int64(k)
	return k, nil
}
