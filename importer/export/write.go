package export

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/diskimporter/diskimporter/importer/atomicfile"
	"github.com/diskimporter/diskimporter/importer/fetch"

	"github.com/diskimporter/diskimporter/importer/blob"
)

const (
	// bufSize is the most bytes one write takes.
	bufSize = 1 << 20
	// zeroBlock is the unit of sparseness: an all-zero block of this
	// size, aligned on it in the file, is not written.
	zeroBlock = 4 << 10
	// stateVersion is the version of the state file's format; a state
	// file of another version is not resumed from.
	stateVersion = 2
)

var zeros [zeroBlock]byte

// exporter is one export under way.
type exporter struct {
	s   *settings
	d   *blob.Disk
	res *Result
	log *slog.Logger
	// written is how far the disk is written, for OnProgress.
	written atomic.Int64
	// failed: the export failed, for the last OnProgress.
	failed bool
}

// out is where the disk's bytes go.
type out interface {
	// write writes b, the disk's bytes from off on. Calls come in
	// order, each starting where the last ended.
	write(b []byte, off int64) error
	// checkpoint makes the bytes before done durable, then records that
	// the blob's sha256 state after them is state; it may do so in the
	// background, writes going on meanwhile, and skips it while the last
	// one is still under way.
	checkpoint(done int64, state []byte) error
	// flush waits for the checkpoint under way, if any, and returns its
	// error.
	flush() error
}

// hashState is the reader of a file output that can resume.
type hashState interface {
	State() ([]byte, error)
	Position() int64
}

// pump reads the disk from r, whose first byte is disk byte from, and
// writes it to o, until r ends (io.EOF after the digest check) or fails.
// The bytes go from the buffers they were received in (fetch.Nexter) to
// o, hashed on the way, without a copy between. With hs (r itself) not
// nil, o gets a checkpoint every CheckpointInterval bytes, and one more
// when the read fails for a reason other than the digest. It returns how
// far the disk was written; cancel stops r when writing fails.
func (e *exporter) pump(ctx context.Context, cancel context.CancelFunc, r io.Reader, hs hashState, from int64, o out) (int64, error) {
	src := fetch.Borrow(r)
	size, every := e.d.Size, e.s.CheckpointInterval
	pos, next := from, from+every
	e.written.Store(from)
	last, lastAt, began := time.Now(), from, time.Now()
	var readErr, werr error
	for readErr == nil && werr == nil {
		if err := ctx.Err(); err != nil {
			readErr = err
			break
		}
		want := min(bufSize, size-pos)
		if hs != nil {
			want = min(want, next-pos) // a checkpoint ends a write
		}
		if want == 0 {
			readErr = checkEnd(src, size)
			break
		}
		b, err := src.Next(int(want))
		if err == io.EOF && pos+int64(len(b)) < size {
			err = io.ErrUnexpectedEOF
		}
		if len(b) > 0 {
			if werr = o.write(b, pos); werr != nil {
				break
			}
			pos += int64(len(b))
			if hs != nil && pos == next && err == nil {
				werr = e.checkpoint(o, hs, pos)
				next += every
			}
			e.written.Store(pos)
		}
		readErr = err
		if now := time.Now(); now.Sub(last) >= e.s.ProgressInterval {
			e.progress(pos, float64(pos-lastAt)/now.Sub(last).Seconds())
			last, lastAt = now, pos
		}
	}
	if werr != nil {
		cancel()
	}
	if err := o.flush(); werr == nil && err != nil {
		werr = err
	}
	if werr != nil {
		return pos, werr
	}
	if readErr != nil && readErr != io.EOF {
		if hs != nil && !errors.Is(readErr, blob.ErrDigest) && hs.Position() == pos && pos > from {
			e.keep(o, hs, pos)
		}
		return pos, sourceError(e.s.display, readErr)
	}
	if d := time.Since(began).Seconds(); d > 0 {
		e.log.Debug("disk read and written", "bytes", pos-from, "mb_per_second", float64(pos-from)/d/1e6)
	}
	return pos, nil
}

// checkEnd reads past the disk's size bytes: the read that checks the
// digest, io.EOF when it matches.
func checkEnd(src fetch.Nexter, size int64) error {
	b, err := src.Next(1)
	switch {
	case len(b) > 0:
		return fmt.Errorf("the disk goes on past its %d bytes", size)
	case err == nil:
		return io.ErrNoProgress
	}
	return err
}

// checkpoint records in o that the disk is written up to pos, with the
// blob's sha256 state there.
func (e *exporter) checkpoint(o out, hs hashState, pos int64) error {
	state, err := hs.State()
	if err != nil {
		return fmt.Errorf("saving the sha256 state: %w", err)
	}
	return o.checkpoint(pos, state)
}

// keep saves, after a failed read, where the disk is written up to, for
// the next run.
func (e *exporter) keep(o out, hs hashState, pos int64) {
	err := o.flush() // so that this checkpoint is not skipped
	if err == nil {
		err = e.checkpoint(o, hs, pos)
	}
	if err == nil {
		err = o.flush()
	}
	if err != nil {
		e.log.Warn("could not save the export's state", "error", err)
	} else {
		e.log.Info("export interrupted; a rerun goes on from here", "done", pos, "size", e.d.Size)
	}
}

func (e *exporter) progress(done int64, rate float64) {
	pct := 100.0
	if e.d.Size > 0 {
		pct = float64(done) * 100 / float64(e.d.Size)
	}
	e.log.Info("progress", "phase", "exporting", "bytes", done, "total", e.d.Size, "percent", int(pct), "mb_per_second", rate/1e6)
}

// streamOut writes every byte, in order, to w. A write stops when ctx
// ends, even one that blocks (a pipe nobody reads): through a write
// deadline when w is an *os.File that takes one (a pipe, a FIFO), else by
// leaving the write to a goroutine, which keeps the buffer (pump drops it).
type streamOut struct {
	ctx      context.Context
	w        io.Writer
	what     string
	deadline bool // ctx's end sets a past write deadline on w
}

// newStreamOut returns a streamOut and the function that releases it.
func newStreamOut(ctx context.Context, w io.Writer, what string) (*streamOut, func() bool) {
	s := &streamOut{ctx: ctx, w: w, what: what}
	if f, ok := w.(*os.File); ok && f.SetWriteDeadline(time.Time{}) == nil {
		s.deadline = true
		return s, context.AfterFunc(ctx, func() { f.SetWriteDeadline(time.Unix(1, 0)) })
	}
	return s, func() bool { return true }
}

func (s *streamOut) write(b []byte, _ int64) error {
	var err error
	if s.deadline {
		_, err = s.w.Write(b)
	} else {
		err = s.writeAsync(b)
	}
	switch {
	case err == nil:
		return nil
	case s.ctx.Err() != nil:
		return fmt.Errorf("writing to %s: %w", s.what, context.Cause(s.ctx))
	}
	return fmt.Errorf("%w: %s: %w", ErrOutput, s.what, err)
}

// writeAsync writes b on a goroutine of its own, and returns when it has
// or when ctx ends, leaving the write (and b) to it.
func (s *streamOut) writeAsync(b []byte) error {
	done := make(chan error, 1)
	go func() {
		_, err := s.w.Write(b)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

func (s *streamOut) checkpoint(int64, []byte) error { return nil }

func (s *streamOut) flush() error { return nil }

// fileOut writes a partial output file at the disk's offsets.
type fileOut struct {
	f         *os.File
	path      string // of f
	statePath string
	dense     bool
	length    int64 // of the file
	template  resumeState
	// pending gets the outcome of the checkpoint under way; nil when
	// none is.
	pending chan error
}

func (o *fileOut) write(b []byte, off int64) error {
	if o.dense {
		return o.writeAt(b, off)
	}
	// Write the runs of blocks that are not all zeros; blocks are
	// aligned on the file's offsets.
	for i := 0; i < len(b); {
		end := min(len(b), i+zeroBlock-int((off+int64(i))%zeroBlock))
		if bytes.Equal(b[i:end], zeros[:end-i]) {
			i = end
			continue
		}
		j := end
		for j < len(b) {
			next := min(len(b), j+zeroBlock)
			if bytes.Equal(b[j:next], zeros[:next-j]) {
				break
			}
			j = next
		}
		if err := o.writeAt(b[i:j], off+int64(i)); err != nil {
			return err
		}
		i = j
	}
	return nil
}

func (o *fileOut) writeAt(b []byte, off int64) error {
	if _, err := o.f.WriteAt(b, off); err != nil {
		return fmt.Errorf("%w: %w", ErrOutput, err)
	}
	o.length = max(o.length, off+int64(len(b)))
	return nil
}

// checkpoint syncs the file and then writes the state file on a goroutine
// of its own, so that the disk's bytes keep coming during the sync (which
// covers every byte written before it starts, so those before done). At
// most one is under way. While one is, the next is skipped rather than
// waited for: on a disk that syncs slower than the bytes arrive,
// checkpoints come as often as it syncs and the export never stops for
// them. flush waits for the one under way and returns its error.
func (o *fileOut) checkpoint(done int64, state []byte) error {
	if o.pending != nil {
		select {
		case err := <-o.pending:
			o.pending = nil
			if err != nil {
				return err
			}
		default:
			return nil
		}
	}
	if o.length < done {
		// Trailing zeros were skipped: the file must still be done
		// bytes long for a rerun to trust it.
		if err := o.f.Truncate(done); err != nil {
			return fmt.Errorf("%w: %w", ErrOutput, err)
		}
		o.length = done
	}
	o.pending = make(chan error, 1)
	go func(ch chan<- error) { ch <- o.persist(done, state) }(o.pending)
	return nil
}

func (o *fileOut) flush() error {
	if o.pending == nil {
		return nil
	}
	err := <-o.pending
	o.pending = nil
	return err
}

// persist makes the file durable, then records in the state file that
// the bytes before done are written and state is the sha256 state after
// them.
func (o *fileOut) persist(done int64, state []byte) error {
	if err := o.f.Sync(); err != nil {
		return fmt.Errorf("%w: syncing %s: %w", ErrOutput, o.path, err)
	}
	st := o.template
	st.Done, st.SHA256State = done, state
	st.Check = st.checksum()
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(o.statePath, append(b, '\n')); err != nil {
		return fmt.Errorf("%w: %w", ErrOutput, err)
	}
	return nil
}
