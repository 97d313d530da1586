package importer

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/diskimporter/diskimporter/importer/decompress"
	"github.com/diskimporter/diskimporter/importer/detect"
	"github.com/diskimporter/diskimporter/importer/qcow2"
	"github.com/diskimporter/diskimporter/layer"
)

// How the disk's size was learned before its bytes, for the result.
const (
	SizeFromLength     = "content-length" // the source's length: not compressed
	SizeFromXZIndex    = "xz-index"       // the xz index at the end of the file
	SizeFromZstdHeader = "zstd-header"    // the zstd frame header
	SizeFromSpool      = "spool"          // counted while spooling to --scratch-dir
	SizeFromQCOW2      = "qcow2-header"   // the virtual size, for --convert raw
)

// disk is the disk image as the layer reads it: decompressed, sized, and
// positioned at its first byte.
type disk struct {
	r           io.Reader
	size        int64
	sizeFrom    string
	format      detect.Format
	compression detect.Compression
	qcow2       *qcow2.Info
	// reopen reads the disk again from disk byte off, for an upload that
	// goes on after a failure (off 0: an upload from the start). off > 0
	// needs resumable.
	reopen func(ctx context.Context, off int64) (io.ReadCloser, error)
	// resumable: the disk can be read again from any byte. Not when the
	// download is checked as a whole, in order (an expected checksum of a
	// compressed source, an md5): then an upload starts over.
	resumable bool
	// closers run when the import ends: they close the source and remove
	// a spool.
	closers []func()
	// dropSource closes the source stream the disk was first read from
	// (also a closer): once reopen has replaced it, its read-ahead is
	// freed before the new stream's is allocated.
	dropSource func()
}

func (d *disk) close() {
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
}

// headSize is how many leading bytes of the disk the checks look at.
const headSize = max(detect.HeadSize, qcow2.HeadSize)

// openDisk turns the source stream rc into the disk stream: it strips the
// compression, detects and checks the format, and learns the size, spooling
// the disk to the scratch directory only when no cheaper way tells it. The
// source bytes pass through sums. interrupt cancels the context rc reads
// with: it ends a read of rc in progress when the disk is closed. An empty
// source is refused: an empty file is no disk.
func openDisk(ctx context.Context, s *settings, src *source, rc io.ReadCloser, interrupt func(), prog *tracker, sums *sourceSums) (*disk, error) {
	closeSource := sync.OnceFunc(func() { rc.Close() })
	d := &disk{closers: []func(){closeSource}, dropSource: closeSource}
	ok := false
	defer func() {
		if !ok {
			d.close()
		}
	}()

	buffered := bufio.NewReaderSize(rc, headSize)
	head, err := peek(buffered, headSize)
	switch {
	case ctx.Err() != nil:
		return nil, fmt.Errorf("import cancelled while reading the first bytes of %s: %w", src.display, context.Cause(ctx))
	case err != nil:
		return nil, fmt.Errorf("%w: reading the first bytes of %s: %w", ErrSourceUnavailable, src.display, err)
	case len(head) == 0:
		return nil, emptyError(src.display, "")
	}
	// A copy: the decompressor starts reading the source on its own
	// goroutine, and the buffer behind head moves on.
	sourceHead := bytes.Clone(head)
	d.compression = detect.CompressionOf(head)
	// The download's sha256 differs from the disk's when the source is
	// compressed or converted; then it is computed on its own.
	converting := s.ConvertRaw && (d.compression != detect.None || detect.FormatOf(head) == detect.QCOW2)
	if d.compression != detect.None || converting {
		sums.transformed()
	}
	// The bytes peeked are still in the buffer: the sums see them all.
	downloaded := sums.reader(buffered)
	diskStream := io.Reader(downloaded)
	if d.compression != detect.None {
		dec, err := newDecompressor(d.compression, downloaded, interrupt, src.display)
		if err != nil {
			return nil, decodeError(src.display, err)
		}
		d.closers = append(d.closers, func() { dec.Close() })
		buffered := bufio.NewReaderSize(dec, headSize)
		if head, err = peek(buffered, headSize); err != nil {
			return nil, err // classified by the decompressor
		}
		if len(head) == 0 {
			return nil, emptyError(src.display, " once decompressed")
		}
		if inner := detect.CompressionOf(head); inner != detect.None {
			return nil, fmt.Errorf("%w: %s is %s inside %s; nested compression is refused, decompress it once first",
				ErrUnsupportedFormat, src.display, inner, d.compression)
		}
		diskStream = buffered
	}

	if d.format, err = checkFormat(head, s.Format); err != nil {
		return nil, fmt.Errorf("%s: %w", src.display, err)
	}

	d.size, d.sizeFrom, err = knownSize(ctx, src, d.compression, sourceHead)
	if err != nil {
		return nil, err
	}
	plan, err := planRead(planInput{
		display: src.display, compression: d.compression, format: d.format,
		size: d.size, sizeFrom: d.sizeFrom, maxSize: s.MaxSize,
		convertRaw: s.ConvertRaw, randomAccess: src.readerAt != nil, inOrder: len(s.Checksums) > 0,
	})
	if err != nil {
		return nil, err
	}
	if d.format == detect.QCOW2 {
		fileSize := d.size
		if d.sizeFrom == "" {
			fileSize = -1
		}
		if d.qcow2, err = qcow2.Inspect(head, fileSize, s.MaxVirtualSize); err != nil {
			return nil, fmt.Errorf("%s: %w", src.display, classifyQCOW2(err))
		}
	}

	switch {
	case plan.convert == ConvertRandomAccess:
		sums.skip()
		rc.Close() // the image is read through Range requests instead
	case plan.spool:
		if err := d.spoolFrom(ctx, s, src, diskStream, prog, sums); err != nil {
			return nil, err
		}
	default:
		d.r = diskStream
		d.resumable = !sums.inOrder()
		d.reopen = func(ctx context.Context, off int64) (io.ReadCloser, error) {
			return d.reopenStream(ctx, src, sums, off)
		}
	}

	if plan.convert != "" {
		if err := d.convertRaw(ctx, s, src); err != nil {
			return nil, err
		}
	}
	ok = true
	return d, nil
}

// spoolFrom writes the disk stream to the scratch directory and makes the
// spool the disk. The spool is removed when the disk is closed.
func (d *disk) spoolFrom(ctx context.Context, s *settings, src *source, r io.Reader, prog *tracker, sums *sourceSums) error {
	prog.enter(PhaseSpooling, max(src.size, 0))
	sums.count.Store(&prog.bytes)
	sp, err := writeSpool(ctx, s.ScratchDir, r, src.size, s.MaxSize)
	sums.count.Store(nil)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("import cancelled while spooling: %w", context.Cause(ctx))
		}
		return spoolError(src, err)
	}
	d.closers = append(d.closers, sp.remove)
	f, err := os.Open(sp.path)
	if err != nil {
		return err
	}
	d.closers = append(d.closers, func() { f.Close() })
	d.r, d.size, d.sizeFrom = f, sp.size, SizeFromSpool
	if d.qcow2 != nil {
		// The header was checked without the file's length: check it
		// again now that the length is known.
		head := make([]byte, min(int64(qcow2.HeadSize), sp.size))
		if _, err := f.ReadAt(head, 0); err != nil {
			return err
		}
		if d.qcow2, err = qcow2.Inspect(head, sp.size, s.MaxVirtualSize); err != nil {
			return fmt.Errorf("%s: %w", src.display, classifyQCOW2(err))
		}
	}
	d.reopen, d.resumable = sp.open, true // the download was checked while spooled
	return nil
}

// reopenStream reads the disk of a source that is not spooled again from
// disk byte off: an uncompressed source straight from there when it can
// (a file, Range requests), otherwise from its first byte, decoded and
// skipped forward. The checksums of the download see a read from the
// first byte only.
func (d *disk) reopenStream(ctx context.Context, src *source, sums *sourceSums, off int64) (io.ReadCloser, error) {
	ctx, interrupt := context.WithCancel(ctx)
	if off > 0 && d.compression == detect.None {
		rc, err := src.open(ctx, off)
		if err == nil {
			return readCloser{rc, closers{rc, cancelCloser(interrupt)}}, nil
		}
		if !errors.Is(err, errFromStart) {
			interrupt()
			return nil, err
		}
	}
	rc, err := src.open(ctx, 0)
	if err != nil {
		interrupt()
		return nil, err
	}
	r := io.Reader(rc)
	if off == 0 {
		r = sums.reader(rc)
	}
	out := readCloser{r, closers{rc, cancelCloser(interrupt)}}
	if d.compression != detect.None {
		dec, err := newDecompressor(d.compression, r, interrupt, src.display)
		if err != nil {
			out.Close()
			return nil, err
		}
		out = readCloser{dec, closers{dec, rc, cancelCloser(interrupt)}}
	}
	if off > 0 {
		if _, err := io.CopyN(io.Discard, out, off); err != nil {
			out.Close()
			return nil, fmt.Errorf("skipping to disk byte %d of %s: %w", off, src.display, err)
		}
	}
	return out, nil
}

// convertRaw makes the disk the guest-visible raw disk of the qcow2 image,
// read at random through the source's Range requests or the spool.
func (d *disk) convertRaw(ctx context.Context, s *settings, src *source) error {
	var ra io.ReaderAt
	if f, ok := d.r.(*os.File); ok {
		ra = f // the spool
	} else {
		ra = src.readerAt(ctx)
	}
	info, raw, err := qcow2.Open(ra, d.size, s.MaxVirtualSize)
	if err != nil {
		return fmt.Errorf("%s: %w", src.display, classifyQCOW2(err))
	}
	vsize := int64(info.VirtualSize)
	if vsize > s.MaxSize {
		return fmt.Errorf("%w: %s has a virtual size of %d bytes, more than MaxSize %d", ErrTooLarge, src.display, vsize, s.MaxSize)
	}
	d.qcow2, d.format, d.size, d.sizeFrom = info, detect.Raw, vsize, SizeFromQCOW2
	raw = corruptReaderAt{raw, src.display}
	d.r = io.NewSectionReader(raw, 0, vsize)
	d.reopen = func(_ context.Context, off int64) (io.ReadCloser, error) {
		return io.NopCloser(io.NewSectionReader(raw, off, vsize-off)), nil
	}
	d.resumable = true
	return nil
}

// corruptReaderAt classifies the read errors of a converted qcow2: past
// its validated header, anything wrong with the image is a corrupt source,
// and a failed read of the source keeps its own class.
type corruptReaderAt struct {
	ra      io.ReaderAt
	display string
}

func (c corruptReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.ra.ReadAt(p, off)
	if err != nil && err != io.EOF && !errors.Is(err, ErrSourceUnavailable) && !errors.Is(err, ErrSourceChanged) {
		err = fmt.Errorf("%w: %s: %w", ErrCorruptSource, c.display, err)
	}
	return n, err
}

// knownSize returns the disk's size when it can be told without reading
// the disk, and how it was told; sizeFrom is empty when it cannot.
func knownSize(ctx context.Context, src *source, c detect.Compression, head []byte) (size int64, sizeFrom string, err error) {
	switch c {
	case detect.None:
		if src.size >= 0 {
			return src.size, SizeFromLength, nil
		}
	case detect.Zstd:
		if n, ok := decompress.ZstdSize(head); ok {
			return n, SizeFromZstdHeader, nil
		}
	case detect.XZ:
		if src.readerAt != nil && src.size > 0 {
			n, err := decompress.XZSize(src.readerAt(ctx), src.size)
			switch {
			case err == nil:
				return n, SizeFromXZIndex, nil
			case errors.Is(err, decompress.ErrNoSize):
				// Corrupt or unusual index: the stream decides, spooled.
			default:
				return 0, "", fmt.Errorf("reading the xz index of %s: %w", src.display, err)
			}
		}
	}
	return 0, "", nil
}

// peek returns the first n bytes of r, or all of them when r is shorter.
func peek(r *bufio.Reader, n int) ([]byte, error) {
	b, err := r.Peek(n)
	if err == io.EOF || err == bufio.ErrBufferFull {
		err = nil
	}
	return b, err
}

// checkFormat returns the disk format of a disk starting with head, or an
// error for the formats diskimporter does not import or for a format other
// than want (when set).
func checkFormat(head []byte, want string) (detect.Format, error) {
	f := detect.FormatOf(head)
	if want != "" && string(f) != want {
		return "", fmt.Errorf("%w: Format %s was asked for, but the disk is %s", ErrFormatMismatch, want, f)
	}
	switch f {
	case detect.Raw, detect.ISO, detect.QCOW2:
		return f, nil
	}
	return "", fmt.Errorf("%w: the disk is a %s image, which KubeVirt cannot run; convert it to raw or qcow2 first (qemu-img convert -O qcow2)", ErrUnsupportedFormat, f)
}

func defaultDiskName(f detect.Format) string {
	if f == detect.Raw {
		return layer.DefaultDiskName
	}
	return "disk." + string(f)
}

func classifyQCOW2(err error) error {
	switch {
	case errors.Is(err, qcow2.ErrBackingFile), errors.Is(err, qcow2.ErrDataFile):
		return fmt.Errorf("%w: %w", ErrBackingFile, err)
	case errors.Is(err, qcow2.ErrTooLarge):
		return fmt.Errorf("%w: %w", ErrTooLarge, err)
	case errors.Is(err, qcow2.ErrUnsupported):
		return fmt.Errorf("%w: %w", ErrUnsupportedFormat, err)
	}
	return fmt.Errorf("%w: %w", ErrCorruptSource, err)
}

func spoolError(src *source, err error) error {
	switch {
	case errors.Is(err, ErrCorruptSource), errors.Is(err, ErrUnsupportedFormat), errors.Is(err, ErrScratchSpace),
		errors.Is(err, ErrTooLarge), errors.Is(err, ErrInvalidOptions), errors.Is(err, ErrShortSource),
		errors.Is(err, ErrSourceUnavailable):
		return err // already classified
	}
	return fmt.Errorf("spooling %s: %w", src.display, err)
}

// newDecompressor returns the decompressed stream of r, decoded on a
// goroutine of its own (see readAhead), that at the end of the compressed
// stream reads r to its end, so that the source's sums see every byte.
// interrupt ends a read of r in progress; Close calls it, then waits for
// the goroutine.
func newDecompressor(c detect.Compression, r io.Reader, interrupt func(), display string) (io.ReadCloser, error) {
	dec, err := decompress.NewReader(c, r)
	if err != nil {
		return nil, err
	}
	ra := newReadAhead(&drainAtEOF{ReadCloser: dec, src: r, display: display}, func() { dec.Close() })
	return ra.interruptWith(interrupt), nil
}

type drainAtEOF struct {
	io.ReadCloser
	src     io.Reader
	display string
}

func (d *drainAtEOF) Read(p []byte) (int, error) {
	n, err := d.ReadCloser.Read(p)
	if err == io.EOF {
		if _, derr := io.Copy(io.Discard, d.src); derr != nil {
			return n, derr
		}
	} else if err != nil {
		err = decodeError(d.display, err)
	}
	return n, err
}

// decodeError classifies an error of a decompressor: the source's own
// failures keep their class, input the decoders refuse to decode (a zstd
// window or an xz dictionary over the limits) is an unsupported format,
// and anything else is a corrupt source.
func decodeError(display string, err error) error {
	switch {
	case errors.Is(err, ErrShortSource), errors.Is(err, ErrSourceUnavailable), errors.Is(err, ErrSourceChanged):
		return err
	case errors.Is(err, decompress.ErrUnsupported):
		return fmt.Errorf("%w: %s: %w", ErrUnsupportedFormat, display, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrCorruptSource, display, err)
}

// emptyError refuses an empty source; how tells how that was learned.
func emptyError(display, how string) error {
	return fmt.Errorf("%w: %s: the source is empty (0 bytes%s): an empty file is no disk", ErrUnsupportedFormat, display, how)
}

// cancelCloser calls a context's cancel function as a Close.
type cancelCloser context.CancelFunc

func (c cancelCloser) Close() error {
	c()
	return nil
}

// closers closes each of its members.
type closers []io.Closer

func (cs closers) Close() error {
	var errs []error
	for _, c := range cs {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}
