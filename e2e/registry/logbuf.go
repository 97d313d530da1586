package registry

import (
	"bytes"
	"io"
	"sync"
)

// logTailSize is how much of the registry's most recent output is kept in
// memory for error messages.
const logTailSize = 64 << 10

// tailWriter keeps the last logTailSize bytes written to it and forwards
// everything to an optional writer.
type tailWriter struct {
	mu  sync.Mutex
	buf []byte
	out io.Writer // may be nil
}

func (w *tailWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf = append(w.buf, p...)
	if len(w.buf) > 2*logTailSize {
		n := copy(w.buf, w.buf[len(w.buf)-logTailSize:])
		w.buf = w.buf[:n]
	}
	out := w.out
	w.mu.Unlock()
	if out != nil {
		// Errors from the user's writer must not stall or kill the
		// registry's output pipe; report success regardless.
		_, _ = out.Write(p)
	}
	return len(p), nil
}

// tail returns a copy of (at most) the last logTailSize bytes.
func (w *tailWriter) tail() []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	b := w.buf
	if len(b) > logTailSize {
		b = b[len(b)-logTailSize:]
	}
	return append([]byte(nil), b...)
}

// LockedBuffer collects a child process's output, written from the
// goroutines os/exec copies it on, for a test to read.
type LockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *LockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Bytes returns a copy of what was written so far.
func (b *LockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}
