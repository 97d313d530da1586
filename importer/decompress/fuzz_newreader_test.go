package decompress

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/diskimporter/diskimporter/importer/detect"
)

// fuzzMaxOutput is how much FuzzNewReader decompresses of an input at
// most: a few bytes can stand for gigabytes.
const fuzzMaxOutput = 2 << 20

// bzip2Text is "all work and no play makes a dull disk. " 20 times, as
// bzip2 -9 compresses it: Go has no bzip2 encoder, and the seed corpus
// must not depend on the bzip2 command.
const bzip2Text = "BZh91AY&SY\xd2\x74\x80\xeb\x00\x00\x81\x91\x80\x40\x01\x26\x2f\xda\xa0\x20\x00\x90\x28\x69\xa6\x00" +
	"\x02\x95\x40\x9e\x91\xb5\x34\xd3\xe9\x35\x26\x09\xc9\x38\x27\x84\xc1\x32\x4d\xc9\xc1\x39\x27\x44\xd0\x4d\x89" +
	"\x92\x6a\x26\xe4\xf4\x4e\xc9\xd1\x3e\x13\x02\x76\x4f\xc4\xd8\x9c\x93\x42\x68\x4f\x64\xf0\x9a\x93\x24\xfc\x4f" +
	"\x09\x92\x6e\x4c\x13\xf8\xbb\x92\x29\xc2\x84\x86\x93\xa4\x07\x58"

// FuzzNewReader decodes any input as each compression NewReader supports
// (and as none), reading at most fuzzMaxOutput bytes, and checks that:
//
//   - nothing panics;
//   - every error is classified: ErrCorrupt or ErrUnsupported (never
//     both), and a truncated input (io.ErrUnexpectedEOF) is ErrCorrupt;
//     the input cannot fail, being in memory;
//   - errors are sticky: a Read after an error or io.EOF returns it
//     again, and a Read after Close fails;
//   - how the input arrives does not matter: fed in pieces of 1 to 13
//     bytes, it decodes to the same bytes, and ends the same way;
//   - none gives back the input.
func FuzzNewReader(f *testing.F) {
	data := disk(f, 3000)
	text := bytes.Repeat([]byte("all work and no play makes a dull disk. "), 20)
	if got, err := decode(detect.Bzip2, []byte(bzip2Text)); err != nil || !bytes.Equal(got, text) {
		f.Fatalf("the bzip2 seed decodes to %q, %v", got, err)
	}
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		f.Fatal(err)
	}
	var gz bytes.Buffer
	gw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	mustWrite(f, gw, data)
	xzOne := xzCompress(f, xz.WriterConfig{DictCap: 1 << 12}, data)
	xzBlocks := xzCompress(f, xz.WriterConfig{DictCap: 1 << 12, BlockSize: 700}, data[:2000])
	xzEmpty := xzCompress(f, xz.WriterConfig{DictCap: 1 << 12}, nil)
	xzCRC32 := xzCompress(f, xz.WriterConfig{DictCap: 1 << 12, BlockSize: 500, CheckSum: xz.CRC32}, data[:2000])
	xzChunk := xzCompress(f, xz.WriterConfig{DictCap: 1 << 12, CheckSum: xz.CRC32}, data[:2000])
	xzSized := xzParallelSeeds(f)
	zst := zstdStream(f, data)
	zstSized := enc.EncodeAll(data[:1000], nil)
	for _, seed := range [][]byte{
		nil,
		data[:100],
		gz.Bytes(),
		append(bytes.Clone(gz.Bytes()), gz.Bytes()...), // two members
		gz.Bytes()[:len(gz.Bytes())-3],                 // truncated
		append(bytes.Clone(gz.Bytes()), "garbage"...),
		xzOne,
		xzBlocks,
		xzEmpty,
		append(append(bytes.Clone(xzOne), 0, 0, 0, 0), xzEmpty...), // padding, then a second stream
		xzOne[:len(xzOne)-12], // no footer
		slices.Concat(xzCRC32, make([]byte, 8), xzBlocks, xzEmpty),                 // streams of blocks with different checks
		hideInChunk(f, xzChunk, hiddenBlock(xzChunk, data[:2000], lzma2Header(0))), // a block hidden in a chunk
		xzSized[0], // blocks whose headers give their sizes
		xzSized[2], // and some that do not
		zst,
		zstSized,
		append(bytes.Clone(zstSized), zstSized...),                          // two frames
		append([]byte("\x50\x2a\x4d\x18\x04\x00\x00\x00skip"), zstSized...), // a skippable frame first
		zst[:len(zst)/2],
		[]byte(bzip2Text),
		[]byte(bzip2Text + bzip2Text), // two streams
		[]byte(bzip2Text[:60]),
		[]byte("BZh9\x17\x72\x45\x38\x50\x90\x00\x00\x00\x00"), // an empty stream
	} {
		f.Add(seed)
	}

	f.Fuzz(func(t *testing.T, in []byte) {
		for _, c := range []detect.Compression{detect.None, detect.Gzip, detect.XZ, detect.Zstd, detect.Bzip2} {
			whole := decodeBounded(t, c, bytes.NewReader(in))
			pieces := decodeBounded(t, c, &chunkReader{b: in, next: len(in) % 13})
			n := min(len(whole.out), len(pieces.out))
			if !bytes.Equal(whole.out[:n], pieces.out[:n]) {
				t.Fatalf("%s: the input read whole and in pieces decodes to different bytes, from byte %d", c, firstDiffByte(whole.out, pieces.out))
			}
			if whole.end != pieces.end || whole.end == "EOF" && len(whole.out) != len(pieces.out) {
				t.Fatalf("%s: read whole, the input decodes to %d bytes and %s (%v); in pieces to %d bytes and %s (%v)",
					c, len(whole.out), whole.end, whole.err, len(pieces.out), pieces.end, pieces.err)
			}
			if c == detect.None && (whole.end != "EOF" || !bytes.Equal(whole.out, in[:min(len(in), fuzzMaxOutput)])) {
				t.Fatalf("none: %d bytes, %v; want the input back", len(whole.out), whole.err)
			}
		}
	})
}

// decoded is what decodeBounded got: the output, and how it ended: "EOF",
// "limit" (fuzzMaxOutput bytes without an error), "corrupt",
// "unsupported", or "NewReader " and one of the last two.
type decoded struct {
	out []byte
	end string
	err error
}

// decodeBounded decodes r as c, at most fuzzMaxOutput bytes of it, and
// checks the errors on the way.
func decodeBounded(t *testing.T, c detect.Compression, r io.Reader) decoded {
	t.Helper()
	return decodeBoundedWith(t, c, r, defaultXZOptions())
}

// decodeBoundedWith is decodeBounded with the options o of an xz decoder.
func decodeBoundedWith(t *testing.T, c detect.Compression, r io.Reader, o xzOptions) decoded {
	t.Helper()
	d, err := newReader(c, r, o)
	if err != nil {
		if d != nil {
			t.Fatalf("%s: NewReader returned a reader with its error %v", c, err)
		}
		return decoded{end: "NewReader " + errorClass(t, c, err), err: err}
	}
	var out []byte
	buf := make([]byte, 32<<10)
	for len(out) < fuzzMaxOutput {
		n, err := d.Read(buf[:min(len(buf), fuzzMaxOutput-len(out))])
		if n < 0 || n > len(buf) {
			t.Fatalf("%s: Read returned %d bytes", c, n)
		}
		out = append(out, buf[:n]...)
		if err == nil {
			continue
		}
		end := "EOF"
		if err != io.EOF {
			end = errorClass(t, c, err)
		}
		// Sticky.
		if n, again := d.Read(buf); n != 0 || again != err {
			t.Fatalf("%s: a Read after %v returned %d bytes, %v", c, err, n, again)
		}
		closeAndRead(t, c, d)
		return decoded{out, end, err}
	}
	closeAndRead(t, c, d)
	return decoded{out, "limit", nil}
}

// errorClass checks that err is of one kind and returns it.
func errorClass(t *testing.T, c detect.Compression, err error) string {
	t.Helper()
	corrupt, unsupported := errors.Is(err, ErrCorrupt), errors.Is(err, ErrUnsupported)
	switch {
	case corrupt == unsupported:
		t.Fatalf("%s: error %v: ErrCorrupt %v, ErrUnsupported %v; want exactly one", c, err, corrupt, unsupported)
	case errors.Is(err, io.ErrUnexpectedEOF) && !corrupt:
		t.Fatalf("%s: error %v: a truncated input that is not ErrCorrupt", c, err)
	case err == io.EOF || errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF):
		t.Fatalf("%s: error %v wraps io.EOF", c, err)
	}
	if corrupt {
		return "corrupt"
	}
	return "unsupported"
}

func closeAndRead(t *testing.T, c detect.Compression, d io.ReadCloser) {
	t.Helper()
	if err := d.Close(); err != nil {
		t.Fatalf("%s: Close: %v", c, err)
	}
	if c == detect.None {
		return // r itself, with a Close that does nothing
	}
	if n, err := d.Read(make([]byte, 10)); n != 0 || err == nil || err == io.EOF {
		t.Fatalf("%s: a Read after Close returned %d bytes, %v", c, n, err)
	}
}

// chunkReader returns b in pieces of 1 to 13 bytes.
type chunkReader struct {
	b    []byte
	next int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	r.next = r.next%13 + 1
	n := copy(p[:min(len(p), r.next)], r.b)
	r.b = r.b[n:]
	return n, nil
}

func firstDiffByte(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
