package export

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/diskimporter/diskimporter/importer/atomicfile"
	"github.com/diskimporter/diskimporter/importer/blob"
)

// maxStateFile bounds what is read of a state file.
const maxStateFile = 64 << 10

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
	// SHA256State is the blob's sha256 state after them (base64): the
	// partial file's first Done bytes must make it again for a rerun to
	// go on (blob.Disk.VerifyPrefix).
	SHA256State []byte `json:"sha256_state"`
	// Check is the sha256 (hex) of this record with Check empty: a state
	// file damaged in any field is not resumed from.
	Check string `json:"check"`
}

// checksum is the Check of st.
func (st resumeState) checksum() string {
	st.Check = ""
	b, _ := json.Marshal(st) // strings, numbers and bytes: never fails
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// errStartOver: the partial output cannot be resumed; the export starts
// over from the disk's first byte.
var errStartOver = errors.New("not resuming")

// toFile writes the disk to Output + ".partial", resuming it when a
// previous export of the same disk left it with its state file and it
// still holds the bytes the state file says, checks the digest, and
// renames it to Output. The partial file is locked for the whole export.
func (e *exporter) toFile(ctx context.Context) error {
	path := e.s.Output
	partial, statePath := path+".partial", path+".partial.state"
	if err := refuseLink(statePath); err != nil {
		return err
	}
	f, err := openPartial(partial, path)
	if err != nil {
		return err
	}
	defer f.Close() // after the rename: the lock is held until then
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	o := e.newFileOut(f, partial, statePath)
	r, hs, done, err := e.resume(ctx, o)
	if err != nil {
		return err
	}
	defer r.Close()
	if _, err := e.pump(ctx, cancel, r, hs, done, o); err != nil {
		if errors.Is(err, blob.ErrDigest) {
			// Removed under the lock, so that no other export takes
			// them for its own.
			atomicfile.Remove(statePath)
			os.Remove(partial)
		}
		return err
	}
	return e.finish(f, o, partial, statePath)
}

// newFileOut is the output to the partial file f.
func (e *exporter) newFileOut(f *os.File, partial, statePath string) *fileOut {
	d := e.d
	return &fileOut{f: f, path: partial, statePath: statePath, dense: e.s.Dense, template: resumeState{
		Version:        stateVersion,
		LayerDigest:    d.Layer.Digest.String(),
		ManifestDigest: d.Ref.DigestStr(),
		DiskPath:       d.Path,
		Size:           d.Size,
		Sparse:         !e.s.Dense,
	}}
}

// resume opens the disk's reader from where the partial file o can be
// resumed, or from the start (the partial file then emptied, its state
// file removed). It returns the reader, its hash state (nil when the
// layer cannot be resumed) and the disk byte it starts at.
func (e *exporter) resume(ctx context.Context, o *fileOut) (io.ReadCloser, hashState, int64, error) {
	d := e.d
	if !d.CanResume() {
		e.log.Info("the layer is compressed, or the registry does not answer Range requests: an interrupted export will start over", "layer", d.Layer.Digest)
		if err := e.startOver(o); err != nil {
			return nil, nil, 0, err
		}
		r, err := d.Reader(ctx)
		if err != nil {
			return nil, nil, 0, sourceError(e.s.display, err)
		}
		return r, nil, 0, nil
	}
	st, err := e.checkPartial(ctx, o)
	if err == nil {
		var rr *blob.Resumable
		rr, err = d.ResumableReader(ctx, st.Done, st.SHA256State)
		switch {
		case err == nil:
			e.res.ResumedFrom = st.Done
			e.log.Info("resuming the partial output", "partial", o.path, "done", st.Done, "size", d.Size)
			return rr, rr, st.Done, nil
		case !errors.Is(err, blob.ErrHashState):
			return nil, nil, 0, sourceError(e.s.display, err)
		}
		err = fmt.Errorf("%w: %w", errStartOver, err)
	}
	switch {
	case errors.Is(err, errStartOver):
		e.log.Warn("not resuming the partial output; starting over from the first byte", "partial", o.path, "reason", err)
	case !errors.Is(err, os.ErrNotExist):
		return nil, nil, 0, err
	}
	if err := e.startOver(o); err != nil {
		return nil, nil, 0, err
	}
	rr, err := d.ResumableReader(ctx, 0, nil)
	if err != nil {
		return nil, nil, 0, sourceError(e.s.display, err)
	}
	return rr, rr, 0, nil
}

// startOver empties the partial file and removes its state file, which
// goes first: it must never describe a file that is being started over.
func (e *exporter) startOver(o *fileOut) error {
	if err := atomicfile.Remove(o.statePath); err != nil {
		return fmt.Errorf("%w: %w", ErrOutput, err)
	}
	if err := o.f.Truncate(0); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrOutput, o.path, err)
	}
	o.length = 0
	return nil
}

// checkPartial loads the state file of the partial file o and re-reads
// the bytes it says are done, which must match it. It returns the state,
// with o ready to go on from there; an error wrapping os.ErrNotExist when
// there is no state file, errStartOver when there is one that does not
// fit, or another error (a cancelled ctx, a failed read).
func (e *exporter) checkPartial(ctx context.Context, o *fileOut) (*resumeState, error) {
	st, err := e.loadState(o)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	ok, err := e.d.VerifyPrefix(ctx, o.f, st.Done, st.SHA256State)
	if err != nil {
		if ctx.Err() == nil {
			err = sourceError(e.s.display, err)
		}
		return nil, err
	}
	e.log.Info("partial output re-read to check it", "partial", o.path, "bytes", st.Done, "seconds", round(time.Since(start).Seconds()))
	if !ok {
		return nil, fmt.Errorf("%w: the first %d bytes of %s are not those the state file recorded", errStartOver, st.Done, o.path)
	}
	// Bytes past the checkpoint were written, or not, by the run that
	// stopped: drop them, so that a skipped zero block reads as zeros.
	if err := o.f.Truncate(st.Done); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrOutput, o.path, err)
	}
	o.length = st.Done
	return st, nil
}

// loadState returns the state of the partial file o, if this export can go
// on from it: an error wrapping os.ErrNotExist when there is none,
// errStartOver when it does not fit.
func (e *exporter) loadState(o *fileOut) (*resumeState, error) {
	f, err := openNoFollow(o.statePath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxStateFile+1))
	if err != nil {
		return nil, fmt.Errorf("%w: reading %s: %w", ErrOutput, o.statePath, err)
	}
	if len(b) > maxStateFile {
		return nil, fmt.Errorf("%w: state file %s is damaged: over %d bytes", errStartOver, o.statePath, maxStateFile)
	}
	var st resumeState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%w: state file %s is damaged: %w", errStartOver, o.statePath, err)
	}
	d := e.d
	switch {
	case st.Version != stateVersion:
		return nil, fmt.Errorf("%w: state file version %d, want %d", errStartOver, st.Version, stateVersion)
	case st.Check != st.checksum():
		return nil, fmt.Errorf("%w: state file %s is damaged: its check does not match its content", errStartOver, o.statePath)
	case st.LayerDigest != d.Layer.Digest.String() || st.DiskPath != d.Path || st.Size != d.Size:
		return nil, fmt.Errorf("%w: it is of another disk: %s %s (%d bytes), this one is %s %s (%d bytes)",
			errStartOver, st.LayerDigest, st.DiskPath, st.Size, d.Layer.Digest, d.Path, d.Size)
	case st.Done <= 0 || st.Done > st.Size:
		return nil, fmt.Errorf("%w: it says %d bytes of %d are done", errStartOver, st.Done, st.Size)
	}
	fi, err := o.f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOutput, err)
	}
	if fi.Size() < st.Done {
		return nil, fmt.Errorf("%w: %s is %d bytes, shorter than the %d the state file says are done", errStartOver, o.path, fi.Size(), st.Done)
	}
	return &st, nil
}

// finish makes the verified partial file f the output, and removes its
// state file.
func (e *exporter) finish(f *os.File, o *fileOut, partial, statePath string) error {
	path := e.s.Output
	if o.length != e.d.Size {
		if err := f.Truncate(e.d.Size); err != nil {
			return fmt.Errorf("%w: %w", ErrOutput, err)
		}
	}
	// Private while partial; once verified, readable as any file the
	// user writes (a VM's qemu may run as another user).
	if err := f.Chmod(0o644); err != nil {
		return fmt.Errorf("%w: %w", ErrOutput, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrOutput, partial, err)
	}
	if err := os.Rename(partial, path); err != nil {
		return fmt.Errorf("%w: %w", ErrOutput, err)
	}
	if err := atomicfile.Remove(statePath); err != nil {
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

// round rounds f to one decimal, as the importer's Result is.
func round(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }
