package qcow2

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/lima-vm/go-qcow2reader/image"
	libqcow2 "github.com/lima-vm/go-qcow2reader/image/qcow2"
)

// Open validates the qcow2 image of size bytes that ra reads, with Inspect,
// and returns what its header says and a reader of the guest-visible (raw)
// disk of Info.VirtualSize bytes.
//
// size must be the image's length; maxVirtualSize is as for Inspect. Errors
// from ra are returned wrapped; every other error wraps one of the errors
// of Inspect. The disk reader returns io.EOF only at the end of the disk; a
// cluster the image maps past the end of its file, or compressed data that
// ends early, is an error wrapping ErrCorrupt. The disk reader is safe for
// concurrent use if ra is. Reads of whole clusters (Info.ClusterSize bytes
// at a multiple of it) are the fastest: go-qcow2reader decompresses a
// compressed cluster from its start for every read that touches it.
//
// The image is read with github.com/lima-vm/go-qcow2reader, which is never
// given the chance to open a file: Inspect refuses backing and external
// data files, the library reads the header from the bytes Inspect checked
// (not from ra again, whose content could have changed), it sees neither
// the name nor the Close method of ra, and it may open no backing image.
func Open(ra io.ReaderAt, size int64, maxVirtualSize uint64) (*Info, io.ReaderAt, error) {
	if size < 0 {
		return nil, nil, fmt.Errorf("qcow2: the image's length must be known to open it, got %d", size)
	}
	head := make([]byte, min(size, HeadSize))
	if n, err := ra.ReadAt(head, 0); n < len(head) {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, nil, fmt.Errorf("qcow2: reading the first %d bytes of the image: %w", len(head), err)
	}
	info, err := Inspect(head, size, maxVirtualSize)
	if err != nil {
		return nil, nil, err
	}
	if info.VirtualSize == 0 {
		// The library refuses the empty L1 table of an empty disk.
		return info, bytes.NewReader(nil), nil
	}
	img, err := openChecked(&pinnedReader{head: head, ra: ra, size: size}, info)
	if err != nil {
		return nil, nil, err
	}
	return info, &disk{img: img, size: int64(info.VirtualSize)}, nil
}

// openChecked opens an image Inspect accepted with the library, refusing
// any backing image, and checks that the library read the same header.
func openChecked(src io.ReaderAt, info *Info) (*libqcow2.Qcow2, error) {
	backingOpened := false
	img, err := libqcow2.Open(src, func(ra io.ReaderAt, _ image.Type) (image.Image, error) {
		backingOpened = true
		return refusedImage{ra}, ErrBackingFile
	})
	if err != nil {
		return nil, fmt.Errorf("%w: go-qcow2reader could not open it: %v", ErrCorrupt, err)
	}
	if backingOpened || img.BackingFile != "" || img.BackingFileOffset != 0 || img.BackingFileSize != 0 {
		return nil, fmt.Errorf("%w: go-qcow2reader found the backing file %q that Inspect did not: refusing it", ErrBackingFile, img.BackingFile)
	}
	if err := img.Readable(); err != nil {
		if errors.Is(err, libqcow2.ErrUnsupportedCompression) {
			return nil, fmt.Errorf("%w: go-qcow2reader has no %s decompressor; rewrite it with qemu-img convert -O qcow2 -o compression_type=zlib in.qcow2 out.qcow2: %v", ErrUnsupported, info.CompressionType, err)
		}
		return nil, fmt.Errorf("%w: go-qcow2reader cannot read it: %v", ErrUnsupported, err)
	}
	if img.Version != info.Version || img.Header.Size != info.VirtualSize || img.ClusterBits != info.ClusterBits || img.L1Size != info.L1Size {
		return nil, fmt.Errorf("%w: go-qcow2reader read another header than the one checked", ErrCorrupt)
	}
	return img, nil
}

// refusedImage stands for a backing image the library must not open. The
// library calls Close on what its opener returns even with an error.
type refusedImage struct{ ra io.ReaderAt }

func (r refusedImage) ReadAt([]byte, int64) (int, error) { return 0, ErrBackingFile }
func (r refusedImage) Extent(int64, int64) (image.Extent, error) {
	return image.Extent{}, ErrBackingFile
}
func (r refusedImage) Type() image.Type { return "refused" }
func (r refusedImage) Size() int64      { return -1 }
func (r refusedImage) Readable() error  { return ErrBackingFile }
func (r refusedImage) Close() error {
	if c, ok := r.ra.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// pinnedReader is what the library reads the image through: the first
// bytes come from head, the ones Inspect checked, the rest from ra. It
// hides every method of ra but ReadAt (the library resolves relative
// backing file names against Name and closes an io.Closer), and it reads
// nothing at or past size.
type pinnedReader struct {
	head []byte
	ra   io.ReaderAt
	size int64
}

func (r *pinnedReader) ReadAt(p []byte, off int64) (int, error) {
	p, eof, err := clip(p, off, r.size)
	if err != nil {
		return 0, err
	}
	n := 0
	if off < int64(len(r.head)) {
		n = copy(p, r.head[off:])
	}
	if n < len(p) {
		m, err := r.ra.ReadAt(p[n:], off+int64(n))
		n += m
		if n < len(p) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF // the file is shorter than size
			}
			return n, &sourceError{err}
		}
	}
	return n, eof
}

// disk reads the guest-visible disk. It guards the library's ReadAt, which
// indexes its L1 table with a negative offset, and which returns io.EOF
// before the end of the disk where a compressed cluster ends.
type disk struct {
	img  *libqcow2.Qcow2
	size int64
}

func (d *disk) ReadAt(p []byte, off int64) (int, error) {
	p, eof, err := clip(p, off, d.size)
	if err != nil {
		return 0, err
	}
	n := 0
	for n < len(p) {
		m, err := d.img.ReadAt(p[n:], off+int64(n))
		if m < 0 || m > len(p)-n {
			return n, fmt.Errorf("%w: go-qcow2reader returned %d bytes for a read of %d", ErrCorrupt, m, len(p)-n)
		}
		n += m
		if err != nil && err != io.EOF {
			return n, readError(off+int64(n), err)
		}
		if m == 0 && n < len(p) {
			return n, fmt.Errorf("%w: the guest data at offset %d ends early (truncated compressed cluster?)", ErrCorrupt, off+int64(n))
		}
	}
	return n, eof
}

// sourceError marks an error of the reader of the image file, as opposed
// to one of the library about what it read.
type sourceError struct{ err error }

func (e *sourceError) Error() string { return e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }

// readError classifies an error of the library. An error of the source is
// kept. Any other is corruption: metadata the library could not make sense
// of, or guest data mapped past the end of the file, which must not look
// like the end of the disk to a caller that tests with errors.Is(err,
// io.EOF), so it is not wrapped.
func readError(off int64, err error) error {
	if se := (*sourceError)(nil); errors.As(err, &se) {
		return fmt.Errorf("qcow2: reading the guest data at offset %d: %w", off, err)
	}
	return fmt.Errorf("%w: reading the guest data at offset %d: %v", ErrCorrupt, off, err)
}

// clip limits a read of p at off to the first size bytes. It returns the
// part of p to fill, io.EOF as the error to return after filling it when the
// read reaches the end, and an error when there is nothing to read.
func clip(p []byte, off, size int64) (_ []byte, eof, err error) {
	switch {
	case off < 0:
		return nil, nil, fmt.Errorf("qcow2: read at negative offset %d", off)
	case off >= size:
		return nil, nil, io.EOF
	case int64(len(p)) > size-off:
		return p[:size-off], io.EOF, nil
	}
	return p, nil, nil
}
