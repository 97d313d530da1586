// Package decompress decodes the compression containers that disk images
// are published in (gzip, zstd, xz, bzip2) as a stream, and finds the
// decompressed size of a compressed image cheaply when its format records
// it, so that a tar header can be written before the image's bytes.
//
// NewReader returns a streaming decoder. XZSize reads the size from the
// index at the end of an .xz file with a few small reads at its end (the
// caller maps them to HTTP Range requests); ZstdSize reads it from the
// header of a .zst file's first frame. gzip records the size only modulo
// 2^32 and bzip2 not at all: for those the caller has to spool the image
// to learn its size.
//
// Every error caused by the compressed bytes themselves (corrupt or
// truncated input) matches ErrCorrupt under errors.Is; errors reading the
// input are returned as they are, so that a network failure is not
// mistaken for a bad file.
package decompress

import (
	"bufio"
	"compress/bzip2"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/diskimporter/diskimporter/importer/detect"
)

// ErrCorrupt matches (under errors.Is) every error that NewReader's
// decoders return because the compressed input is corrupt or truncated.
// A truncated input also matches io.ErrUnexpectedEOF.
var ErrCorrupt = errors.New("corrupt compressed input")

// ErrUnsupported matches the errors of input that may well be valid but
// that NewReader will not decode: it needs more memory than MaxZstdWindow
// or MaxXZDict allow, a zstd dictionary, an xz filter other than LZMA2, or
// an xz check other than none, CRC32, CRC64 and SHA-256.
var ErrUnsupported = errors.New("unsupported compressed input")

// Limits on the memory a decoder may allocate because its input asks for
// it. Input beyond them fails with ErrUnsupported.
const (
	// MaxZstdWindow is the largest zstd window (history) accepted,
	// 128 MiB: the default limit of the zstd command line tool
	// (--memory=128MB), beyond which it refuses to decompress too. Only
	// frames made with --long=28 or more, or with --ultra -20 and up on
	// large inputs, need more.
	MaxZstdWindow = 128 << 20

	// MaxXZDict is the largest LZMA2 dictionary accepted in any block
	// of an .xz file, 512 MiB: eight times that of xz -9. The decoder
	// allocates the dictionary a block header asks for, up to 4 GiB, for
	// each block.
	MaxXZDict = 512 << 20
)

// bufSize is the size of the buffer between the input and the gzip, xz
// and bzip2 decoders, which read it a byte at a time (the zstd decoder
// reads whole blocks). The gzip decoder would add a 4 KiB one itself; the
// LZMA2 decoder none, and the xz package's decoder is some 5% faster with
// one even when the input is cheap to read (BenchmarkDecodeOptions).
const bufSize = 64 << 10

// zstdConcurrency is the number of blocks the zstd decoder may decode
// ahead in other goroutines; 0 would mean GOMAXPROCS, at most 4. One
// decodes in the caller's goroutine. On two CPUs (BenchmarkDecodeOptions)
// more were no faster on real data and took three to four times the
// memory, and a single-threaded decoder already outruns the network by
// far, leaving the other CPUs to hash the layer.
const zstdConcurrency = 1

// NewReader returns a reader of the decompressed content of r, which is
// compressed with c. For detect.None it returns r itself, with a Close
// that does nothing.
//
// gzip and xz inputs may hold several concatenated members or streams
// (and xz stream padding), as gzip -d and xz -d accept; zstd inputs
// several frames; bzip2 inputs several streams. Anything after the last
// of them is an error.
//
// Read errors caused by the compressed data, including a truncated input,
// match ErrCorrupt. An error from r itself is returned as it is, wrapped
// with the name of the format. Whether the decompressed content is itself
// compressed is the caller's business.
//
// The blocks of an xz stream whose headers give their sizes, as xz -T0
// writes them, are decoded on up to GOMAXPROCS goroutines at once (none
// when GOMAXPROCS is 1), within XZParallelMemory; the output stays in
// order, and r is read only within NewReader and Read, in order, once.
//
// NewReader may read the start of r. Close releases the decoder (for zstd
// and xz its goroutines and buffers, once they stop); it does not close r.
func NewReader(c detect.Compression, r io.Reader) (io.ReadCloser, error) {
	return newReader(c, r, defaultXZOptions())
}

// newReader is NewReader with the options of an xz decoder.
func newReader(c detect.Compression, r io.Reader, o xzOptions) (io.ReadCloser, error) {
	if c == detect.None {
		return io.NopCloser(r), nil
	}
	d := &reader{name: string(c), src: &source{r: r}}
	var err error
	switch c {
	case detect.Gzip:
		var zr *gzip.Reader
		zr, err = gzip.NewReader(bufio.NewReaderSize(d.src, bufSize))
		if err == nil {
			zr.Multistream(true)
			d.dec = zr
		}
	case detect.Zstd:
		var zr *zstd.Decoder
		zr, err = zstd.NewReader(d.src,
			zstd.WithDecoderConcurrency(zstdConcurrency),
			zstd.WithDecoderMaxWindow(MaxZstdWindow),
			zstd.WithDecoderMaxMemory(MaxZstdWindow),
		)
		if err == nil {
			d.dec = zr
			d.close = zr.Close
		}
	case detect.XZ:
		var x *xzDecoder
		x, err = newXZDecoder(bufio.NewReaderSize(d.src, bufSize), o)
		if err == nil {
			d.dec = x
			d.close = x.Close
		}
	case detect.Bzip2:
		d.dec = bzip2.NewReader(bufio.NewReaderSize(d.src, bufSize))
	default:
		return nil, fmt.Errorf("decompress: unsupported compression %q", c)
	}
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, d.classify(err)
	}
	return d, nil
}

// reader wraps a decoder to classify its errors.
type reader struct {
	name  string
	dec   io.Reader
	src   *source
	close func()
	err   error // sticky
}

var errClosed = errors.New("decompress: read after Close")

func (r *reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.dec.Read(p)
	if err == io.EOF && r.src.n == 0 {
		err = io.ErrUnexpectedEOF // no input at all
	}
	if err != nil {
		if err != io.EOF {
			err = r.classify(err)
		}
		r.err = err
	}
	return n, err
}

// classify returns err, the decoder's, as the error of the input when the
// input failed, as ErrUnsupported when the decoder refused the input, and
// as ErrCorrupt otherwise.
func (r *reader) classify(err error) error {
	switch {
	case r.src.err != nil && !errors.As(err, new(*xzBlockError)):
		// (An xz block read before the input failed is corrupt all the
		// same.)
		return fmt.Errorf("%s: reading compressed input: %w", r.name, r.src.err)
	case errors.Is(err, ErrUnsupported):
		return fmt.Errorf("%s: %w", r.name, err)
	case errors.Is(err, zstd.ErrWindowSizeExceeded),
		errors.Is(err, zstd.ErrDecoderSizeExceeded),
		errors.Is(err, zstd.ErrUnknownDictionary):
		return fmt.Errorf("%w: %s: %w", ErrUnsupported, r.name, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrCorrupt, r.name, err)
}

// Close releases the decoder. It does not close the underlying reader.
func (r *reader) Close() error {
	if r.close != nil {
		r.close()
		r.close = nil
	}
	if r.err == nil || r.err == io.EOF {
		r.err = errClosed
	}
	return nil
}

// source reads the compressed input, remembering its first error other
// than io.EOF.
type source struct {
	r   io.Reader
	n   int64 // bytes read
	err error
}

func (s *source) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.n += int64(n)
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}
