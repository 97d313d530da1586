package blob

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
)

// maxHeaderBytes bounds the tar headers kept of one entry (its PAX and
// GNU headers, and a sparse map): archive/tar allows 1 MiB for each.
const maxHeaderBytes = 8 << 20

const block = 512

// tarSource is the stream a tar reader reads: it counts the bytes read,
// keeps the last error of the source (other than io.EOF) to tell a failed
// read from a corrupt layer, and, when record is set, keeps the bytes from
// position from on: the headers of the entry being read.
type tarSource struct {
	r      io.Reader
	n      int64
	err    error
	record bool
	from   int64
	buf    []byte
	over   bool // the entry's headers exceeded maxHeaderBytes
}

func (c *tarSource) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.record && n > 0 {
		c.keep(p[:n])
	}
	c.n += int64(n)
	if err != nil && err != io.EOF {
		c.err = err
	}
	return n, err
}

// keep records p, read at position c.n, from position c.from on.
func (c *tarSource) keep(p []byte) {
	if skip := c.from - c.n; skip > 0 {
		if skip >= int64(len(p)) {
			return
		}
		p = p[skip:]
	}
	if len(c.buf)+len(p) > maxHeaderBytes {
		c.over = true
		return
	}
	c.buf = append(c.buf, p...)
}

// startEntry starts recording at position at, where the next entry's
// headers start.
func (c *tarSource) startEntry(at int64) { c.from, c.buf, c.over = at, c.buf[:0], false }

// corrupt wraps err, a failure of a reader over c (tar, decompression),
// with ErrCorrupt unless the source itself failed or the read was
// cancelled: the layer's bytes are then what is wrong.
func (c *tarSource) corrupt(err error) error {
	if err == nil || err == io.EOF || c.err != nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrCorrupt, err)
}

// isFile tells whether a tar entry is a regular file (archive/tar reads
// an old GNU sparse file as its expanded bytes).
func isFile(h *tar.Header) bool { return h.Typeflag == tar.TypeReg || h.Typeflag == tar.TypeGNUSparse }

// isSparse tells whether archive/tar reads h as a GNU sparse file, by the
// same rules.
func isSparse(h *tar.Header) bool {
	if h.Typeflag == tar.TypeGNUSparse {
		return true
	}
	major, minor := h.PAXRecords["GNU.sparse.major"], h.PAXRecords["GNU.sparse.minor"]
	switch {
	case major == "0" && (minor == "0" || minor == "1"), major == "1" && minor == "0":
		return true
	case major != "" || minor != "":
		return false
	}
	return h.PAXRecords["GNU.sparse.map"] != ""
}

// nextHeader is where the entry after h starts, h's data (physLen bytes
// of it for a sparse entry) starting at dataAt.
func nextHeader(h *tar.Header, sp *sparseMap, dataAt int64) int64 {
	n := h.Size
	switch {
	case sp != nil:
		n = sp.physLen
	case h.Typeflag == tar.TypeLink, h.Typeflag == tar.TypeSymlink, h.Typeflag == tar.TypeChar,
		h.Typeflag == tar.TypeBlock, h.Typeflag == tar.TypeDir, h.Typeflag == tar.TypeFifo,
		h.Typeflag == tar.TypeXGlobalHeader:
		n = 0 // no data, as archive/tar reads them
	}
	return (dataAt + n + block - 1) / block * block
}

// segment is a run of data of a sparse file: length bytes at off in the
// file, stored at phys in its data section.
type segment struct{ off, length, phys int64 }

func (s segment) end() int64 { return s.off + s.length }

// sparseMap says where the bytes of a sparse tar entry are: the segments
// in order, stored one after the other in physLen bytes; the rest of its
// size bytes are zeros.
type sparseMap struct {
	size    int64
	segs    []segment
	physLen int64
}

// parseSparse reads the sparse map of h, whose headers are raw, read from
// position at up to dataAt, where its data starts. archive/tar has read h
// from the same bytes; every way this reading could differ from it is an
// error.
func parseSparse(h *tar.Header, raw []byte, over bool, at, dataAt int64) (*sparseMap, error) {
	if over || int64(len(raw)) != dataAt-at {
		return nil, fmt.Errorf("%w: the headers of sparse file %s could not be followed (%d bytes of them kept, %d read)", ErrCorrupt, h.Name, len(raw), dataAt-at)
	}
	main, rest, err := mainHeader(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: sparse file %s: %w", ErrCorrupt, h.Name, err)
	}
	total := numeric(main[124:136])
	if s, ok := h.PAXRecords["size"]; ok {
		total, err = strconv.ParseInt(s, 10, 64)
	}
	var entries [][2]int64
	var used int // bytes of rest the map takes
	switch {
	case err != nil || total < 0:
		err = errors.New("bad size field")
	case h.Typeflag == tar.TypeGNUSparse:
		entries, used, err = oldGNUMap(main, rest)
	case h.PAXRecords["GNU.sparse.major"] == "1":
		entries, used, err = pax1Map(rest)
		total -= int64(used)
	default:
		entries, err = pax0Map(h.PAXRecords)
	}
	if err == nil && used != len(rest) {
		err = fmt.Errorf("its map takes %d bytes, %d precede its data", used, len(rest))
	}
	if err != nil {
		return nil, fmt.Errorf("%w: sparse file %s: %w", ErrCorrupt, h.Name, err)
	}
	return newSparseMap(h, entries, total)
}

// newSparseMap checks the map's entries as archive/tar does, and that they
// take the physLen bytes of the entry's data exactly.
func newSparseMap(h *tar.Header, entries [][2]int64, physLen int64) (*sparseMap, error) {
	m := &sparseMap{size: h.Size, segs: make([]segment, 0, len(entries))}
	var end int64
	for _, e := range entries {
		off, n := e[0], e[1]
		if off < 0 || n < 0 || off > math.MaxInt64-n || off+n > h.Size || off < end || m.physLen > math.MaxInt64-n {
			return nil, fmt.Errorf("%w: sparse file %s: entry %d+%d is out of order or out of its %d bytes", ErrCorrupt, h.Name, off, n, h.Size)
		}
		m.segs = append(m.segs, segment{off: off, length: n, phys: m.physLen})
		end, m.physLen = off+n, m.physLen+n
	}
	if m.physLen != physLen {
		return nil, fmt.Errorf("%w: sparse file %s: its map holds %d bytes of data, its entry %d", ErrCorrupt, h.Name, m.physLen, physLen)
	}
	return m, nil
}

// mainHeader skips the PAX and GNU long name headers at the start of raw
// and returns the entry's own header block and the bytes after it.
func mainHeader(raw []byte) (main, rest []byte, err error) {
	for off := 0; off+block <= len(raw); {
		b := raw[off : off+block]
		switch b[156] {
		case tar.TypeXHeader, tar.TypeGNULongName, tar.TypeGNULongLink:
			n := numeric(b[124:136])
			if n < 0 || n > int64(len(raw)) {
				return nil, nil, errors.New("bad size of an extended header")
			}
			off += block + int((n+block-1)/block*block)
		default:
			return b, raw[off+block:], nil
		}
	}
	return nil, nil, errors.New("no header block")
}

// oldGNUMap reads the sparse array of an old GNU sparse header and of the
// extension blocks that follow it.
func oldGNUMap(main, rest []byte) ([][2]int64, int, error) {
	entries, more := sparseArray(main[386:482], main[482])
	used := 0
	for more {
		if used+block > len(rest) {
			return nil, 0, errors.New("its sparse map extension is missing")
		}
		b := rest[used : used+block]
		var e [][2]int64
		e, more = sparseArray(b[:504], b[504])
		entries = append(entries, e...)
		used += block
	}
	for _, e := range entries {
		if e[0] < 0 || e[1] < 0 {
			return nil, 0, errors.New("bad number in its sparse map")
		}
	}
	return entries, used, nil
}

// sparseArray reads 24-byte (offset, length) entries up to the first
// empty one, as GNU tar does.
func sparseArray(b []byte, extended byte) ([][2]int64, bool) {
	var entries [][2]int64
	for ; len(b) >= 24 && b[0] != 0; b = b[24:] {
		entries = append(entries, [2]int64{numeric(b[:12]), numeric(b[12:24])})
	}
	return entries, extended > 0
}

// pax1Map reads the map at the start of the data of a PAX 1.0 sparse
// file: decimal numbers, one a line (the count, then offset and length
// pairs), read in whole blocks up to the one holding the last.
func pax1Map(data []byte) ([][2]int64, int, error) {
	used, lines, need := 0, 0, -1
	for need < 0 || lines < need {
		if used+block > len(data) {
			return nil, 0, errors.New("its sparse map is cut short")
		}
		lines += bytes.Count(data[used:used+block], []byte{'\n'})
		used += block
		if need < 0 && lines >= 1 {
			first, _, _ := bytes.Cut(data, []byte{'\n'})
			count, err := strconv.ParseInt(string(first), 10, 32)
			if err != nil || count < 0 {
				return nil, 0, errors.New("bad entry count in its sparse map")
			}
			need = 1 + 2*int(count)
		}
	}
	toks := strings.Split(string(data[:used]), "\n")
	entries, err := pairs(toks[1:need])
	return entries, used, err
}

// pax0Map reads the map of a PAX 0.0 or 0.1 sparse file from its records
// (archive/tar turns 0.0's offset and numbytes records into a 0.1 map).
func pax0Map(records map[string]string) ([][2]int64, error) {
	count, err := strconv.ParseInt(records["GNU.sparse.numblocks"], 10, 32)
	toks := strings.Split(records["GNU.sparse.map"], ",")
	if len(toks) == 1 && toks[0] == "" {
		toks = nil
	}
	if err != nil || count < 0 || int64(len(toks)) != 2*count {
		return nil, errors.New("bad GNU.sparse.numblocks or GNU.sparse.map")
	}
	return pairs(toks)
}

// pairs parses offset and length pairs.
func pairs(toks []string) ([][2]int64, error) {
	entries := make([][2]int64, 0, len(toks)/2)
	for i := 0; i+1 < len(toks); i += 2 {
		off, err1 := strconv.ParseInt(toks[i], 10, 64)
		n, err2 := strconv.ParseInt(toks[i+1], 10, 64)
		if err1 != nil || err2 != nil {
			return nil, errors.New("bad number in its sparse map")
		}
		entries = append(entries, [2]int64{off, n})
	}
	return entries, nil
}

// numeric parses a tar number field, octal or base-256; -1 when it is
// not one.
func numeric(b []byte) int64 {
	if len(b) > 0 && b[0]&0x80 != 0 {
		if b[0]&0x40 != 0 {
			return -1 // negative
		}
		var x uint64
		for i, c := range b {
			if i == 0 {
				c &= 0x7f
			}
			if x>>55 != 0 {
				return -1
			}
			x = x<<8 | uint64(c)
		}
		return int64(x)
	}
	s := string(bytes.Trim(b, " \x00"))
	if s == "" {
		return 0
	}
	x, err := strconv.ParseInt(s, 8, 64)
	if err != nil {
		return -1
	}
	return x
}

// first is the index of the first segment that ends after logical
// position pos.
func (m *sparseMap) first(pos int64) int {
	return sort.Search(len(m.segs), func(i int) bool { return m.segs[i].end() > pos })
}

// physAt is where in the data section the bytes of the file from pos on
// are stored.
func (m *sparseMap) physAt(pos int64) int64 {
	i := m.first(pos)
	if i == len(m.segs) {
		return m.physLen
	}
	s := m.segs[i]
	return s.phys + max(pos-s.off, 0)
}

// hole is how many bytes of zeros the file has from pos on, segment i
// being the first that ends after pos.
func (m *sparseMap) hole(pos int64, i int) int64 {
	if i < len(m.segs) {
		return max(m.segs[i].off-pos, 0)
	}
	return m.size - pos
}

// sparseReader expands a sparse file from position pos on, its data
// section read from r from physAt(pos) on: one segment lookup per Read.
type sparseReader struct {
	m   *sparseMap
	r   io.Reader
	pos int64
	i   int
}

func (s *sparseReader) Read(p []byte) (int, error) {
	if s.pos >= s.m.size {
		return 0, io.EOF
	}
	for s.i < len(s.m.segs) && s.m.segs[s.i].end() <= s.pos {
		s.i++
	}
	p = p[:min(int64(len(p)), s.m.size-s.pos)]
	if z := s.m.hole(s.pos, s.i); z > 0 {
		n := min(int64(len(p)), z)
		clear(p[:n])
		s.pos += n
		return int(n), nil
	}
	n, err := s.r.Read(p[:min(int64(len(p)), s.m.segs[s.i].end()-s.pos)])
	s.pos += int64(n)
	if err == io.EOF {
		err = nil
		if s.pos < s.m.segs[s.i].end() {
			err = io.ErrUnexpectedEOF
		}
	}
	return n, err
}

// sparseReaderAt reads a sparse file whose data section is at base in ra.
type sparseReaderAt struct {
	m    *sparseMap
	ra   io.ReaderAt
	base int64
}

func (s sparseReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read at negative offset %d", off)
	}
	if off >= s.m.size {
		return 0, io.EOF
	}
	q := p[:min(int64(len(p)), s.m.size-off)]
	pos, i := off, s.m.first(off)
	for done := 0; done < len(q); {
		for i < len(s.m.segs) && s.m.segs[i].end() <= pos {
			i++
		}
		n := min(int64(len(q)-done), s.m.hole(pos, i))
		if n > 0 {
			clear(q[done : done+int(n)])
		} else {
			seg := s.m.segs[i]
			n = min(int64(len(q)-done), seg.end()-pos)
			if k, err := s.ra.ReadAt(q[done:done+int(n)], s.base+seg.phys+pos-seg.off); int64(k) < n {
				return done + k, err
			}
		}
		done += int(n)
		pos += n
	}
	if len(q) < len(p) {
		return len(q), io.EOF
	}
	return len(q), nil
}
