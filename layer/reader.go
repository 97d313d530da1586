package layer

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// errClosed is returned by Read after Close.
var errClosed = errors.New("layer reader closed")

// chunk is one filled buffer handed from the producer to the consumer. err is
// the error that follows the data: io.EOF on a clean end, when digest and
// size are set.
type chunk struct {
	buf     []byte // the bytes to hand out
	whole   []byte // the buffer behind buf, returned to free once read
	err     error
	digest  v1.Hash
	content v1.Hash
	size    int64
}

// reader produces the tar stream in its own goroutine, which reads the
// source and hashes it, so that the consumer (usually the TLS writer of the
// upload) runs on another core. Buffers travel between the two through
// channels of full and free buffers, one send per buffer.
type reader struct {
	l    *Layer
	src  io.ReadCloser
	full chan chunk
	free chan []byte
	stop chan struct{}
	done chan struct{}

	cur     []byte // unread part of the buffer being consumed
	curFull []byte // the whole buffer behind cur, returned to free when drained
	err     error  // error that follows cur
	last    chunk  // the final chunk, whose digest is recorded at io.EOF

	closeOnce sync.Once
	closeErr  error
}

// start is where a reader starts: the stream position its producer reads
// from, the hash states there, and how many bytes it hashes without
// handing them out (they were sent already).
type start struct {
	at    Checkpoint
	skip  int64
	layer hash.Hash // nil: a new hash
	disk  hash.Hash // nil: a new hash, or none
}

func newReader(l *Layer, src io.ReadCloser, from start) *reader {
	total := int64(len(l.header)) + l.size + padding(l.size) + trailerSize
	size := l.bufSize
	if int64(size) > total {
		size = int(total)
	}
	r := &reader{
		l:    l,
		src:  src,
		full: make(chan chunk, l.buffers),
		free: make(chan []byte, l.buffers),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	for range l.buffers {
		r.free <- make([]byte, size)
	}
	go r.produce(from)
	return r
}

// body is the tar stream from stream position at on, the disk's bytes
// read from src, which starts at the disk byte that position falls on.
func (l *Layer) body(src io.Reader, at int64) io.Reader {
	h := int64(len(l.header))
	diskFrom := min(max(at-h, 0), l.size)
	tail := padding(l.size) + trailerSize
	return io.MultiReader(
		bytes.NewReader(l.header[min(at, h):]),
		&exactReader{r: src, size: l.size - diskFrom},
		io.LimitReader(zeros{}, tail-max(at-h-l.size, 0)),
	)
}

func (r *reader) produce(from start) {
	defer close(r.done)
	body := r.l.body(r.src, from.at.Offset)
	layerHash, contentHash := from.layer, from.disk
	if layerHash == nil {
		layerHash = sha256.New()
	}
	if contentHash == nil && r.l.onContent != nil {
		contentHash = sha256.New()
	}
	contentStart := int64(len(r.l.header))
	contentEnd := contentStart + r.l.size
	total, skip := from.at.Offset, from.skip
	for {
		var buf []byte
		select {
		case buf = <-r.free:
		case <-r.stop:
			return
		}
		whole := buf
		n, err := fill(body, buf)
		buf = buf[:n]
		if contentHash != nil {
			// The content part of buf, hashed on another core while
			// this one hashes the whole buffer.
			from := min(max(contentStart-total, 0), int64(n))
			to := min(max(contentEnd-total, 0), int64(n))
			var wg sync.WaitGroup
			if from < to {
				wg.Go(func() { contentHash.Write(buf[from:to]) })
			}
			layerHash.Write(buf)
			wg.Wait()
		} else {
			layerHash.Write(buf)
		}
		total += int64(n)
		r.l.checkpoint(total, int64(n), layerHash, contentHash)
		// Bytes sent already are hashed, not handed out again.
		k := min(skip, int64(n))
		skip -= k
		c := chunk{buf: buf[k:], whole: whole, err: err}
		if len(c.buf) == 0 && err == nil {
			r.free <- whole // never blocks: it came from there
			continue
		}
		if err == io.EOF {
			c.digest = sha256Hash(layerHash)
			if contentHash != nil {
				c.content = sha256Hash(contentHash)
			}
			c.size = total
		}
		select {
		case r.full <- c:
		case <-r.stop:
			return
		}
		if err != nil {
			return
		}
	}
}

func sha256Hash(h hash.Hash) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
}

// fill reads into buf until it is full or r returns an error, which is
// returned as is (io.EOF included).
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Read returns the tar stream. The layer's digest is recorded when Read
// returns io.EOF, never earlier and never after another error.
func (r *reader) Read(p []byte) (int, error) {
	if err := r.next(); err != nil {
		return 0, err
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	if len(r.cur) == 0 && r.err != nil {
		return n, r.end()
	}
	return n, nil
}

// WriteTo writes the rest of the tar stream to w, each filled buffer in one
// Write: io.Copy, and so net/http's upload, uses it instead of copying the
// stream through a 32 KiB buffer of its own. The layer's digest is recorded
// when the stream ended cleanly.
func (r *reader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if err := r.next(); err != nil {
			if err == io.EOF {
				err = nil
			}
			return total, err
		}
		n, err := w.Write(r.cur)
		total += int64(n)
		r.cur = r.cur[n:]
		if err != nil {
			return total, err
		}
	}
}

// next makes r.cur the unread bytes of the next filled buffer, or returns
// the error that ends the stream.
func (r *reader) next() error {
	for len(r.cur) == 0 {
		if r.err != nil {
			return r.end()
		}
		if r.curFull != nil {
			r.free <- r.curFull[:cap(r.curFull)]
			r.curFull = nil
		}
		select {
		case c := <-r.full:
			r.cur, r.curFull, r.err, r.last = c.buf, c.whole, c.err, c
		case <-r.stop:
			return errClosed
		}
	}
	return nil
}

// end returns the error that follows the stream, recording the layer's
// digest when it is a clean io.EOF.
func (r *reader) end() error {
	if r.err == io.EOF {
		r.l.finish(r.last.digest, r.last.size)
		if r.l.onContent != nil {
			r.l.onContent(r.last.content)
		}
	}
	return r.err
}

// Close stops the producer and closes the source. It is safe to call from
// another goroutine than Read, and more than once.
func (r *reader) Close() error {
	r.closeOnce.Do(func() {
		close(r.stop)
		r.closeErr = r.src.Close() // unblocks a producer waiting on the source
		<-r.done
	})
	return r.closeErr
}

// exactReader passes through exactly size bytes of r and fails with
// ErrSizeMismatch when r ends early or holds more.
type exactReader struct {
	r    io.Reader
	size int64
	read int64
	eof  bool
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.read == e.size {
		return 0, e.checkEnd()
	}
	if rem := e.size - e.read; int64(len(p)) > rem {
		p = p[:rem]
	}
	n, err := e.r.Read(p)
	e.read += int64(n)
	switch {
	case err == io.EOF && e.read < e.size:
		return n, fmt.Errorf("%w: source ended after %d of %d bytes", ErrSizeMismatch, e.read, e.size)
	case err == io.EOF:
		e.eof = true
		return n, nil
	case err != nil:
		return n, fmt.Errorf("reading disk source at byte %d: %w", e.read, err)
	}
	return n, nil
}

// checkEnd returns io.EOF when the source has no byte past size.
func (e *exactReader) checkEnd() error {
	if e.eof {
		return io.EOF
	}
	var one [1]byte
	n, err := io.ReadFull(e.r, one[:])
	switch {
	case n == 1:
		return fmt.Errorf("%w: source holds more than %d bytes", ErrSizeMismatch, e.size)
	case err == io.EOF:
		e.eof = true
		return io.EOF
	default:
		return fmt.Errorf("reading disk source at byte %d: %w", e.read, err)
	}
}

// zeros is an endless reader of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
