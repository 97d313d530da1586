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
	"path/filepath"
	"time"

	"github.com/diskimporter/diskimporter/importer/blob"
)

const (
	// bufSize is the unit handed from the reading goroutine (which
	// reassembles the pieces in order and hashes them) to the writing
	// one.
	bufSize = 1 << 20
	// buffers is how many of them are in flight.
	buffers = 4
	// zeroBlock is the unit of sparseness: an all-zero block of this
	// size, aligned on it in the file, is not written.
	zeroBlock = 4 << 10
	// stateVersion is the version of the state file's format.
	stateVersion = 1
)

var zeros [zeroBlock]byte

// exporter is one export under way.
type exporter struct {
	s   *settings
	d   *blob.Disk
	res *Result
	log *slog.Logger
}

// out is where the disk's bytes go.
type out interface {
	// write writes b, the disk's bytes from off on. Calls come in
	// order, each starting where the last ended.
	write(b []byte, off int64) error
	// checkpoint makes the bytes before done durable, then records that
	// the blob's sha256 state after them is state.
	checkpoint(done int64, state []byte) error
}

// hashState is the reader of a file output that can resume.
type hashState interface {
	State() ([]byte, error)
	Position() int64
}

// chunk is bytes of the disk on their way to the output.
type chunk struct {
	buf   []byte
	off   int64
	state []byte // the sha256 state after buf, at a checkpoint; nil otherwise
}

// pump reads the disk from r, whose first byte is disk byte from, and
// writes it to o, until r ends (io.EOF after the digest check) or fails.
// Reading (the reassembly of the pieces and the sha256, in r) runs on a
// goroutine of its own, writing on the caller's. With hs (r itself) not
// nil, o gets a checkpoint every CheckpointInterval bytes, and one more
// when the read fails for a reason other than the digest. It returns how
// far the disk was written; cancel stops r when writing fails.
func (e *exporter) pump(ctx context.Context, cancel context.CancelFunc, r io.Reader, hs hashState, from int64, o out) (int64, error) {
	size, every := e.d.Size, e.s.CheckpointInterval
	free := make(chan []byte, buffers)
	for range buffers {
		free <- make([]byte, bufSize)
	}
	full := make(chan chunk, buffers)
	var readErr error
	go func() {
		defer close(full)
		pos, next := from, from+every
		for {
			var buf []byte
			select {
			case buf = <-free:
			case <-ctx.Done():
				readErr = ctx.Err()
				return
			}
			want := min(int64(len(buf)), size-pos)
			if hs != nil {
				want = min(want, next-pos) // a checkpoint ends a chunk
			}
			if want == 0 {
				// The end of the disk: the read that checks the digest.
				n, err := r.Read(buf[:1])
				switch {
				case n > 0:
					readErr = fmt.Errorf("the disk goes on past its %d bytes", size)
				case err == io.EOF:
				case err == nil:
					readErr = io.ErrNoProgress
				default:
					readErr = err
				}
				return
			}
			n, err := io.ReadFull(r, buf[:want])
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			if n > 0 {
				c := chunk{buf: buf[:n], off: pos}
				pos += int64(n)
				if hs != nil && pos == next && err == nil {
					if c.state, err = hs.State(); err != nil {
						err = fmt.Errorf("saving the sha256 state: %w", err)
					}
					next += every
				}
				full <- c // never blocks: a chunk holds one of the buffers
			}
			if err != nil {
				readErr = err
				return
			}
		}
	}()

	written, werr := from, error(nil)
	last, lastAt, began := time.Now(), from, time.Now()
	for c := range full {
		if werr == nil {
			werr = o.write(c.buf, c.off)
			if werr == nil && c.state != nil {
				werr = o.checkpoint(c.off+int64(len(c.buf)), c.state)
			}
			if werr != nil {
				cancel()
			} else {
				written = c.off + int64(len(c.buf))
			}
		}
		free <- c.buf[:cap(c.buf)] // never blocks: it came from there
		if now := time.Now(); now.Sub(last) >= e.s.ProgressInterval {
			e.progress(written, float64(written-lastAt)/now.Sub(last).Seconds())
			last, lastAt = now, written
		}
	}
	if werr != nil {
		return written, werr
	}
	if readErr != nil {
		if hs != nil && !errors.Is(readErr, blob.ErrDigest) && hs.Position() == written && written > from {
			// Keep what was written for the next run.
			state, err := hs.State()
			if err == nil {
				err = o.checkpoint(written, state)
			}
			if err != nil {
				e.log.Warn("could not save the export's state", "error", err)
			} else {
				e.log.Info("export interrupted; a rerun goes on from here", "done", written, "size", size)
			}
		}
		return written, sourceError(e.s.display, readErr)
	}
	if d := time.Since(began).Seconds(); d > 0 {
		e.log.Debug("disk read and written", "bytes", written-from, "mb_per_second", float64(written-from)/d/1e6)
	}
	return written, nil
}

func (e *exporter) progress(done int64, rate float64) {
	pct := 100.0
	if e.d.Size > 0 {
		pct = float64(done) * 100 / float64(e.d.Size)
	}
	e.log.Info("exporting", "bytes", done, "total", e.d.Size, "percent", int(pct), "mb_per_second", rate/1e6)
}

// streamOut writes every byte, in order, to w.
type streamOut struct {
	w    io.Writer
	what string
}

func (s *streamOut) write(b []byte, _ int64) error {
	if _, err := s.w.Write(b); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrOutput, s.what, err)
	}
	return nil
}

func (s *streamOut) checkpoint(int64, []byte) error { return nil }

// resumeState is the state file of a partial output: how much of it is
// on disk, and the layer blob's sha256 state at that point.
type resumeState struct {
	Version        int    `json:"version"`
	LayerDigest    string `json:"layer_digest"`
	ManifestDigest string `json:"manifest_digest"`
	DiskPath       string `json:"disk_path"`
	Size           int64  `json:"size"`
	Sparse         bool   `json:"sparse"`
	// Done is how many bytes of the disk are in the partial file, synced.
	Done int64 `json:"done"`
	// SHA256State is the blob's sha256 state after them (base64).
	SHA256State []byte `json:"sha256_state"`
}

// fileOut writes a partial output file at the disk's offsets.
type fileOut struct {
	f         *os.File
	path      string // of f
	statePath string
	dense     bool
	length    int64 // of the file
	template  resumeState
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

func (o *fileOut) checkpoint(done int64, state []byte) error {
	if o.length < done {
		// Trailing zeros were skipped: the file must still be done
		// bytes long for a rerun to trust it.
		if err := o.f.Truncate(done); err != nil {
			return fmt.Errorf("%w: %w", ErrOutput, err)
		}
		o.length = done
	}
	if err := o.f.Sync(); err != nil {
		return fmt.Errorf("%w: syncing %s: %w", ErrOutput, o.path, err)
	}
	st := o.template
	st.Done, st.SHA256State = done, state
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(o.statePath, append(b, '\n')); err != nil {
		return fmt.Errorf("%w: %w", ErrOutput, err)
	}
	return nil
}

// writeFileAtomic replaces path with b: written to a temporary file,
// synced, renamed over it.
func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// loadState returns the state of a partial output that this export can go
// on from, or why not.
func (e *exporter) loadState(partial, statePath string) (*resumeState, error) {
	b, err := os.ReadFile(statePath)
	if err != nil {
		return nil, err
	}
	var st resumeState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("state file %s: %w", statePath, err)
	}
	switch {
	case st.Version != stateVersion:
		return nil, fmt.Errorf("state file version %d, want %d", st.Version, stateVersion)
	case st.LayerDigest != e.d.Layer.Digest.String() || st.DiskPath != e.d.Path || st.Size != e.d.Size:
		return nil, fmt.Errorf("it is of another disk: %s %s (%d bytes), this one is %s %s (%d bytes)",
			st.LayerDigest, st.DiskPath, st.Size, e.d.Layer.Digest, e.d.Path, e.d.Size)
	case st.Done < 0 || st.Done > st.Size:
		return nil, fmt.Errorf("it says %d bytes of %d are done", st.Done, st.Size)
	}
	fi, err := os.Stat(partial)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() < st.Done {
		return nil, fmt.Errorf("%s is %d bytes, shorter than the %d the state file says are done", partial, fi.Size(), st.Done)
	}
	return &st, nil
}

// toFile writes the disk to Output + ".partial", resuming it when a
// previous export of the same disk left it with its state file, checks the
// digest, and renames it to Output.
func (e *exporter) toFile(ctx context.Context) error {
	path := e.s.Output
	partial, statePath := path+".partial", path+".partial.state"
	d := e.d

	var st *resumeState
	var state []byte
	if d.CanResume() {
		var err error
		st, err = e.loadState(partial, statePath)
		switch {
		case err == nil:
			state = st.SHA256State
		case errors.Is(err, os.ErrNotExist):
		default:
			e.log.Warn("not resuming the partial output; starting over", "partial", partial, "reason", err)
		}
	} else {
		e.log.Info("the layer is compressed, or the registry does not answer Range requests: an interrupted export will start over", "layer", d.Layer.Digest)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var r io.ReadCloser
	var hs hashState
	done := int64(0)
	if st != nil {
		rr, err := d.ResumableReader(ctx, st.Done, state)
		if err != nil {
			if !errors.Is(err, blob.ErrHashState) {
				return sourceError(e.s.display, err)
			}
			e.log.Warn("not resuming the partial output; starting over", "partial", partial, "reason", err)
			st = nil
		} else {
			r, hs, done = rr, rr, st.Done
		}
	}
	if st == nil {
		// The state goes first: it must never describe a file that
		// is being started over.
		if err := os.Remove(statePath); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%w: %w", ErrOutput, err)
		}
		if d.CanResume() {
			rr, err := d.ResumableReader(ctx, 0, nil)
			if err != nil {
				return sourceError(e.s.display, err)
			}
			r, hs = rr, rr
		} else {
			rc, err := d.Reader(ctx)
			if err != nil {
				return sourceError(e.s.display, err)
			}
			r = rc
		}
	}
	defer r.Close()

	flags := os.O_RDWR | os.O_CREATE
	if done == 0 {
		flags |= os.O_TRUNC
	}
	f, err := os.OpenFile(partial, flags, 0o644)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrOutput, err)
	}
	closed := false
	defer func() {
		if !closed {
			f.Close()
		}
	}()
	if done > 0 {
		// Bytes past the checkpoint were written, or not, by the run
		// that stopped: drop them, so that a skipped zero block reads
		// as zeros.
		if err := f.Truncate(done); err != nil {
			return fmt.Errorf("%w: %w", ErrOutput, err)
		}
		e.res.ResumedFrom = done
		e.log.Info("resuming the partial output", "partial", partial, "done", done, "size", d.Size)
	}
	o := &fileOut{f: f, path: partial, statePath: statePath, dense: e.s.Dense, length: done, template: resumeState{
		Version:        stateVersion,
		LayerDigest:    d.Layer.Digest.String(),
		ManifestDigest: d.Ref.DigestStr(),
		DiskPath:       d.Path,
		Size:           d.Size,
		Sparse:         !e.s.Dense,
	}}
	if _, err := e.pump(ctx, cancel, r, hs, done, o); err != nil {
		if errors.Is(err, blob.ErrDigest) {
			f.Close()
			closed = true
			os.Remove(statePath)
			os.Remove(partial)
		}
		return err
	}

	// Verified: make it the output.
	if o.length != d.Size {
		if err := f.Truncate(d.Size); err != nil {
			return fmt.Errorf("%w: %w", ErrOutput, err)
		}
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	closed = true
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrOutput, partial, err)
	}
	if err := os.Rename(partial, path); err != nil {
		return fmt.Errorf("%w: %w", ErrOutput, err)
	}
	if err := os.Remove(statePath); err != nil && !errors.Is(err, os.ErrNotExist) {
		e.log.Warn("removing the state file", "path", statePath, "error", err)
	}
	syncDir(filepath.Dir(path))
	if n, ok := allocated(path); ok {
		e.res.AllocatedBytes = &n
	}
	return nil
}

// syncDir makes a rename in dir durable, as far as the system allows.
func syncDir(dir string) {
	if f, err := os.Open(dir); err == nil {
		f.Sync()
		f.Close()
	}
}
