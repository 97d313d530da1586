package qcow2

import (
	"compress/flate"
	"io"

	libqcow2 "github.com/lima-vm/go-qcow2reader/image/qcow2"
)

// go-qcow2reader takes the io.EOF that a decompressor returns together
// with the last bytes of a compressed cluster for a failure. compress/flate
// returns them together whenever a cluster's data does not end on its
// 32 KiB window, which is every cluster smaller than 32 KiB: without this,
// no compressed cluster of an image with 512 B to 16 KiB clusters reads.
// The library also decompresses a cluster again from its start for every
// short read, and flate reads at most 32 KiB at a time.
//
// So this package registers, for the whole process, a raw deflate
// decompressor (what qcow2 calls zlib) that fills each read fully and
// reports io.EOF only on the read after the last bytes. This is the only
// global state of the library the package changes.
func init() {
	libqcow2.SetDecompressor(libqcow2.CompressionTypeZlib, func(r io.Reader) (io.ReadCloser, error) {
		return &fullReader{r: flate.NewReader(r)}, nil
	})
}

// fullReader reads until p is full, and returns the end of its stream as
// a read of 0 bytes.
type fullReader struct {
	r   io.ReadCloser
	err error // io.EOF once the stream has ended
}

// maxEmptyReads is how many reads of 0 bytes without an error fullReader
// takes before it gives up, as bufio does.
const maxEmptyReads = 100

func (f *fullReader) Read(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	n, empty := 0, 0
	for n < len(p) {
		m, err := f.r.Read(p[n:])
		n += m
		switch {
		case err == io.EOF:
			f.err = err
			if n > 0 {
				return n, nil
			}
			return 0, err
		case err != nil:
			return n, err
		case m == 0:
			if empty++; empty >= maxEmptyReads {
				return n, io.ErrNoProgress
			}
		}
	}
	return n, nil
}

func (f *fullReader) Close() error { return f.r.Close() }
