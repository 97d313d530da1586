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
// A block whose header gives both its sizes, as xz -T0 and xz
// --block-size write them, and two of which fit in XZParallelMemory, is
// read whole and decoded on a worker goroutine (see xzPool) while the
// blocks before it are still being decoded or read; the output stays in
// order. Other blocks are decoded here, as they are read, once the blocks
// before them are done.
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
	blocks    xzRecords // the blocks read so far
	between   bool      // after the footer: stream padding, another stream or the end

	// The block whose header was read last and that is neither decoded
	// nor handed to the workers yet, while held is true.
	next xzBlockInfo
	held bool
	// What the input holds after the blocks read so far, once known:
	// io.EOF at its end, or the error that ends the decoding there.
	tail error

	par     *xzPool // the workers, from the first block they can take
	opts    xzOptions
	filling *xzJob // the block handed to them whose data is being read

	// The block decoded here, while lz is not nil.
	lz    io.Reader
	data  lzma2Data
	check hash.Hash // nil for no check
	cur   xzBlockInfo
	out   int64 // bytes decoded

	buf [1024]byte // a block header, or a block's padding and check
}

// xzBlockInfo is what a block header says of its block.
type xzBlockInfo struct {
	headerLen        int64
	compressed, size int64  // -1 when the header does not say
	dict             uint64 // the LZMA2 dictionary size
	checkType        byte   // of the block's stream
}

// checkLen returns the size of the check field of a block of a stream
// whose check is t.
func checkLen(t byte) int {
	switch t {
	case xzCheckCRC32:
		return 4
	case xzCheckCRC64:
		return 8
	case xzCheckSHA256:
		return 32
	}
	return 0
}

// padLen returns the size of the block padding after the block's
// compressed data, of n bytes.
func (b *xzBlockInfo) padLen(n int64) int { return int(-(b.headerLen + n) & 3) }

// unpadded returns the block's unpadded size, as its index record gives it,
// for n bytes of compressed data.
func (b *xzBlockInfo) unpadded(n int64) uint64 {
	return uint64(b.headerLen+n) + uint64(checkLen(b.checkType))
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
func newXZDecoder(in *bufio.Reader, o xzOptions) (*xzDecoder, error) {
	x := &xzDecoder{in: in, opts: o}
	var h [xzHeaderLen]byte
	if _, err := io.ReadFull(in, h[:]); err != nil {
		return nil, err
	}
	if err := x.streamHeader(h[:]); err != nil {
		return nil, err
	}
	return x, nil
}

// Read reads the output of the blocks in order: of the block decoded
// here, or of the first one handed to the workers, once it has handed out
// the blocks that follow as far as it may.
func (x *xzDecoder) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if x.lz != nil {
			n, err := x.readBlock(p)
			if n > 0 || err != nil || x.lz != nil {
				return n, err
			}
			continue
		}
		x.readAhead()
		if x.filling != nil && !x.par.ready() {
			x.fill()
			continue
		}
		if x.par.busy() {
			n, err := x.par.read(p)
			if errors.Is(err, errInputEnded) {
				err = x.tail
			}
			if err != nil {
				x.par.stop()
			}
			if n > 0 || err != nil {
				return n, err
			}
			continue
		}
		if x.held {
			if err := x.startBlock(); err != nil {
				x.tail = err
			}
			continue
		}
		x.par.stop()
		return 0, x.tail
	}
}

// Close stops the workers, if any, and waits for them.
func (x *xzDecoder) Close() {
	x.par.stop()
}

// readBlock reads from the block decoded here. It leaves x.lz nil at the
// end of the block, once its end has checked out.
func (x *xzDecoder) readBlock(p []byte) (int, error) {
	n, err := x.lz.Read(p)
	if x.check != nil {
		x.check.Write(p[:n])
	}
	x.out += int64(n)
	switch {
	case x.cur.size >= 0 && x.out > x.cur.size:
		return n, fmt.Errorf("block decodes to more than the %d bytes its header says", x.cur.size)
	case x.cur.compressed >= 0 && x.data.n > x.cur.compressed:
		return n, fmt.Errorf("block has more than the %d compressed bytes its header says", x.cur.compressed)
	case err == io.EOF:
		x.lz = nil
		return n, x.endBlock()
	}
	return n, err
}

// readAhead reads block headers and hands their blocks to the workers for
// as long as they may take more, and until a block that is to be decoded
// here, the end of the input or an error, or a block whose data is not
// read whole yet.
func (x *xzDecoder) readAhead() {
	for x.tail == nil && x.filling == nil {
		if !x.held {
			if x.par.full() {
				return
			}
			b, err := x.nextBlock()
			if err != nil {
				x.tail = err
				return
			}
			x.next, x.held = b, true
		}
		cost, ok := x.parallelCost(&x.next)
		if !ok {
			return
		}
		if x.par == nil {
			x.par = newXZPool(x.opts)
		}
		if !x.par.admit(cost) {
			return
		}
		x.held = false
		x.dispatch(cost)
		if x.filling != nil {
			return
		}
	}
}

// parallelCost returns the memory that decoding the block b on a worker
// takes (its compressed data, padding and check, its dictionary, its
// output), and whether it may: when its header gives both sizes, neither
// more than maxXZParallelBlock, and two such blocks fit in the memory
// allowed.
func (x *xzDecoder) parallelCost(b *xzBlockInfo) (int64, bool) {
	if x.opts.workers < 1 || b.compressed < 0 || b.size < 0 ||
		b.compressed > maxXZParallelBlock || b.size > maxXZParallelBlock {
		return 0, false
	}
	in := b.compressed + int64(b.padLen(b.compressed)+checkLen(b.checkType))
	cost := in + int64(workerDictCap(b)) + b.size
	return cost, 2*cost <= x.opts.memory
}

// dispatch hands the block held, whose header says its sizes, to the
// workers, and starts reading its data.
func (x *xzDecoder) dispatch(cost int64) {
	b := &x.next
	n := b.compressed + int64(b.padLen(b.compressed)+checkLen(b.checkType))
	j := x.par.newJob()
	j.reset(b, cost, int(n))
	x.blocks.add(b.unpadded(b.compressed), uint64(b.size))
	x.par.submit(j)
	x.filling = j
	x.fill()
}

// fill reads the next step of the data of the block being read for the
// workers.
func (x *xzDecoder) fill() {
	j := x.filling
	if err := j.fill(x.in); err != nil {
		x.tail = fmt.Errorf("block data, padding and check: %w", truncated(err))
		j.end(false)
	}
	if j.filled() || x.tail != nil {
		x.filling = nil
	}
}

// nextBlock reads what follows a stream header or a block: a block header
// or the index, the footer, stream padding and the next stream's header,
// up to the next block header. It returns io.EOF at the end of the input
// after a stream and its padding.
func (x *xzDecoder) nextBlock() (xzBlockInfo, error) {
	for {
		if x.between {
			if err := x.nextStream(); err != nil {
				return xzBlockInfo{}, err
			}
			continue
		}
		b, err := x.in.ReadByte()
		if err != nil {
			return xzBlockInfo{}, fmt.Errorf("block header or index: %w", truncated(err))
		}
		if b == 0 {
			if err := x.index(); err != nil {
				return xzBlockInfo{}, err
			}
			x.between = true
			continue
		}
		return x.blockHeader(b)
	}
}

// nextStream reads stream padding, four bytes of it, or the header of the
// next stream. It returns io.EOF at the end of the input.
func (x *xzDecoder) nextStream() error {
	var w [4]byte
	if n, err := io.ReadFull(x.in, w[:]); err != nil {
		if n == 0 && err == io.EOF {
			return io.EOF
		}
		return fmt.Errorf("stream padding: %w", err)
	}
	if w == [4]byte{} {
		return nil
	}
	var h [xzHeaderLen]byte
	copy(h[:], w[:])
	if _, err := io.ReadFull(x.in, h[4:]); err != nil {
		return fmt.Errorf("stream header: %w", truncated(err))
	}
	return x.streamHeader(h[:])
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

// newCheck returns the hash of the check type t, nil for none.
func newCheck(t byte) hash.Hash {
	switch t {
	case xzCheckCRC32:
		return crc32.NewIEEE()
	case xzCheckCRC64:
		return crc64.New(crc64Table)
	case xzCheckSHA256:
		return sha256.New()
	}
	return nil
}

// blockHeader reads the header of a block, whose first byte is size. It
// refuses a block that needs a filter other than LZMA2 or a dictionary
// larger than MaxXZDict.
func (x *xzDecoder) blockHeader(size byte) (xzBlockInfo, error) {
	n := (int(size) + 1) * 4
	h := x.buf[:n]
	h[0] = size
	if _, err := io.ReadFull(x.in, h[1:]); err != nil {
		return xzBlockInfo{}, fmt.Errorf("block header: %w", truncated(err))
	}
	b, err := parseBlockHeader(h)
	b.checkType = x.checkType
	return b, err
}

// parseBlockHeader parses the block header h, whose length its first byte
// gives.
func parseBlockHeader(h []byte) (xzBlockInfo, error) {
	n := len(h)
	b := xzBlockInfo{headerLen: int64(n)}
	if crc32.ChecksumIEEE(h[:n-4]) != binary.LittleEndian.Uint32(h[n-4:]) {
		return b, errors.New("block header CRC32 mismatch")
	}
	flags := h[1]
	if flags&xzBlockFlagRes != 0 {
		return b, fmt.Errorf("reserved block flags %#x set", flags)
	}
	p := h[2 : n-4]
	sizes := [2]int64{-1, -1} // compressed, uncompressed
	for i, bit := range []byte{0x40, 0x80} {
		if flags&bit != 0 {
			v, k := decodeVLI(p)
			if k == 0 || i == 0 && v == 0 {
				return b, errors.New("bad size in block header")
			}
			sizes[i], p = int64(v), p[k:]
		}
	}
	b.compressed, b.size = sizes[0], sizes[1]
	props, p, err := parseFilters(p, int(flags&3)+1)
	if err != nil {
		return b, err
	}
	if !allZero(p) {
		return b, errors.New("non-zero block header padding")
	}
	b.dict = lzma2Dict(props)
	if b.dict > MaxXZDict {
		return b, xzUnsupported("dictionary of %d MiB, more than the %d MiB allowed", b.dict>>20, MaxXZDict>>20)
	}
	return b, nil
}

// parseFilters parses the count filter flags at the start of p, which
// must be LZMA2 alone, and returns its properties byte and the rest of p.
func parseFilters(p []byte, count int) (byte, []byte, error) {
	var props byte
	for i := 0; i < count; i++ {
		id, k := decodeVLI(p)
		if k == 0 {
			return 0, nil, errors.New("bad filter ID in block header")
		}
		p = p[k:]
		size, k := decodeVLI(p)
		if k == 0 || size > uint64(len(p)-k) {
			return 0, nil, errors.New("bad filter properties in block header")
		}
		prop := p[k : k+int(size)]
		p = p[k+int(size):]
		switch {
		case id != lzma2Filter:
			return 0, nil, xzUnsupported("filter %#x (only LZMA2 is supported)", id)
		case i != count-1:
			return 0, nil, errors.New("LZMA2 filter not last")
		case size != 1 || prop[0] > 40:
			return 0, nil, errors.New("bad LZMA2 properties")
		}
		props = prop[0]
	}
	return props, p, nil
}

// startBlock starts decoding the block held here.
func (x *xzDecoder) startBlock() error {
	x.held = false
	x.data = lzma2Data{in: x.in}
	lz, err := lzma.Reader2Config{DictCap: int(x.next.dict)}.NewReader2(&x.data)
	if err != nil {
		return err
	}
	x.lz = lz
	x.cur = x.next
	x.check = newCheck(x.cur.checkType)
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

// endBlock checks the end of the block decoded here, whose LZMA2 decoder
// has reported its end: the sizes, the block padding and the check.
func (x *xzDecoder) endBlock() error {
	if !x.data.done {
		return errors.New("LZMA2 data ends before its end marker")
	}
	b := &x.cur
	comp := x.data.n
	if b.compressed >= 0 && comp != b.compressed {
		return fmt.Errorf("block of %d compressed bytes, its header says %d", comp, b.compressed)
	}
	if b.size >= 0 && x.out != b.size {
		return fmt.Errorf("block decodes to %d bytes, its header says %d", x.out, b.size)
	}
	pad, cl := b.padLen(comp), checkLen(b.checkType)
	tail := x.buf[:pad+cl]
	if _, err := io.ReadFull(x.in, tail); err != nil {
		return fmt.Errorf("block padding and check: %w", truncated(err))
	}
	if err := checkBlockTail(tail, pad, x.check, x.buf[pad+cl:pad+cl]); err != nil {
		return err
	}
	x.blocks.add(b.unpadded(comp), uint64(x.out))
	return nil
}

// checkBlockTail checks the block padding, pad bytes, and the check field
// after it, in tail, against the check h of the block's output (nil for
// none). It appends the check it computes to scratch.
func checkBlockTail(tail []byte, pad int, h hash.Hash, scratch []byte) error {
	if !allZero(tail[:pad]) {
		return errors.New("non-zero block padding")
	}
	if h == nil {
		return nil
	}
	var sum []byte
	switch h := h.(type) {
	case hash.Hash32:
		sum = binary.LittleEndian.AppendUint32(scratch, h.Sum32())
	case hash.Hash64:
		sum = binary.LittleEndian.AppendUint64(scratch, h.Sum64())
	default:
		sum = h.Sum(scratch)
	}
	if !bytes.Equal(sum, tail[pad:]) {
		return errors.New("block check mismatch")
	}
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
//
// In whole mode, for a block read whole and decoded on a worker by a
// decoder that goes on to the next block (see xzWorker), it keeps the end
// marker from the decoder, failing the read with errLZMA2End there, and
// refuses LZMA2 data that does not start with a dictionary reset, as a
// new decoder would.
type lzma2Data struct {
	in    *bufio.Reader // or, in whole mode:
	block *blockBytes
	whole bool
	n     int64 // bytes read
	done  bool  // the end marker has been read

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

var (
	errLZMA2Overrun = errors.New("the decoder reads past the LZMA2 end marker")
	errLZMA2End     = errors.New("the LZMA2 data ends")
	errNoDictReset  = errors.New("LZMA2 data that starts without a dictionary reset")
)

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
	c := p[0]
	if d.whole && d.n == 1 && c != 0x00 && c != 0x01 && c < 0xe0 {
		return 0, errNoDictReset
	}
	switch {
	case c == 0x00:
		d.done = true
		if d.whole {
			return 0, errLZMA2End
		}
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
		b, err := d.readByte()
		if err != nil {
			return 0, fmt.Errorf("LZMA2 data: %w", truncated(err))
		}
		p[0] = b
		d.n++
		return 1, nil
	}
	var k int
	var err error
	if d.whole {
		k, err = d.block.Read(p)
	} else {
		k, err = d.in.Read(p)
	}
	if k == 0 {
		if err == nil {
			return d.read(p[:1])
		}
		return 0, fmt.Errorf("LZMA2 data: %w", truncated(err))
	}
	d.n += int64(k)
	return k, nil
}

// readByte reads a byte of the input. (Not through an interface: this is
// the decoder's inner loop.)
func (d *lzma2Data) readByte() (byte, error) {
	if d.whole {
		return d.block.ReadByte()
	}
	return d.in.ReadByte()
}
