package importer

import (
	"errors"
	"io"
	"sync"
)

// readAhead reads r on a goroutine of its own into a few large buffers and
// hands them out in order: the stage before it (a decompressor) then runs
// on another core than the stage after it (the layer's hash), instead of
// the two taking turns on one goroutine. It costs one copy per byte.
type readAhead struct {
	full chan block
	free chan []byte
	stop chan struct{}
	done chan struct{} // closed when the goroutine has ended

	r      io.Reader
	closeR func()
	// interrupt, when set, ends a Read of r in progress (see
	// interruptWith).
	interrupt func()
	start     sync.Once // the goroutine starts at the first Read, not before

	cur     block
	off     int
	stopped sync.Once
}

// block is a filled buffer and the error that follows it.
type block struct {
	buf []byte
	err error
}

// Read-ahead buffers: enough for a decompressor to run a buffer ahead of
// the layer while the layer hashes the previous one.
const (
	readAheadBuffers = 3
	readAheadSize    = 1 << 20
)

// newReadAhead returns a reader of r that reads ahead from its first Read
// on. closeR (when not nil) is called once r is no longer read: by the
// goroutine as it ends, so that r is never closed under a Read in
// progress, or by Close when no Read came.
func newReadAhead(r io.Reader, closeR func()) *readAhead {
	ra := &readAhead{
		full: make(chan block, readAheadBuffers),
		free: make(chan []byte, readAheadBuffers),
		stop: make(chan struct{}),
		done: make(chan struct{}),
		r:    r, closeR: closeR,
	}
	for range readAheadBuffers {
		ra.free <- nil // allocated on first use
	}
	return ra
}

// interruptWith makes Close call f before it waits for the goroutine: f
// must make a Read of r in progress return (by cancelling the context the
// source below r reads with, say) and be safe to call during that Read.
// Without it, Close waits for the Read in progress to end by itself.
func (ra *readAhead) interruptWith(f func()) *readAhead {
	ra.interrupt = f
	return ra
}

func (ra *readAhead) fill(r io.Reader, closeR func()) {
	defer close(ra.done)
	if closeR != nil {
		defer closeR()
	}
	for {
		var buf []byte
		select {
		case buf = <-ra.free:
		case <-ra.stop:
			return
		}
		if buf == nil {
			buf = make([]byte, readAheadSize)
		}
		n, err := readFull(r, buf)
		select {
		case ra.full <- block{buf[:n], err}:
		case <-ra.stop:
			return
		}
		if err != nil {
			return
		}
	}
}

// readFull reads into buf until it is full or r fails, and returns r's
// error as is (io.ReadFull would turn an early io.EOF into
// io.ErrUnexpectedEOF).
func readFull(r io.Reader, buf []byte) (int, error) {
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

func (ra *readAhead) Read(p []byte) (int, error) {
	ra.start.Do(func() { go ra.fill(ra.r, ra.closeR) })
	for ra.off == len(ra.cur.buf) {
		if ra.cur.err != nil {
			return 0, ra.cur.err
		}
		if ra.cur.buf != nil {
			ra.free <- ra.cur.buf[:cap(ra.cur.buf)]
		}
		select {
		case ra.cur = <-ra.full:
			ra.off = 0
		case <-ra.stop:
			return 0, errors.New("read after close")
		}
	}
	n := copy(p, ra.cur.buf[ra.off:])
	ra.off += n
	return n, nil
}

// Close stops the goroutine and returns once it has ended (and closed r):
// at once when it waits for a buffer, or after its Read in progress, which
// the interrupt function ends. r is never read after Close returns.
func (ra *readAhead) Close() error {
	ra.stopped.Do(func() {
		close(ra.stop)
		started := true
		ra.start.Do(func() {
			started = false
			if ra.closeR != nil {
				ra.closeR()
			}
		})
		if !started {
			return
		}
		if ra.interrupt != nil {
			ra.interrupt()
		}
		<-ra.done
	})
	return nil
}
