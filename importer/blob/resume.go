package blob

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/diskimporter/diskimporter/importer/hashstate"
)

// Errors of ResumableReader.
var (
	// ErrNotResumable: the disk cannot be read from a byte on with the
	// layer digest still checked: its layer is compressed, or the
	// registry does not answer Range requests. Read it with Reader.
	ErrNotResumable = errors.New("the disk cannot be read from the middle")
	// ErrHashState: a saved hash state is not one of this layer blob at
	// the byte it is said to be at.
	ErrHashState = errors.New("the saved sha256 state does not fit")
)

// CanResume tells whether ResumableReader can read the disk: its layer is
// uncompressed and the registry answers Range requests.
func (d *Disk) CanResume() bool { return d.Offset >= 0 && d.blob != nil && d.blob.Ranged() }

// Resumable reads the disk of an uncompressed layer from some byte on, in
// order, hashing the layer blob as it goes, and can say at any point what
// the hash state is, so that a later read can go on from there: a download
// killed half-way resumes from the bytes already kept instead of from the
// first byte, and the layer's digest is still checked over every byte of
// the blob, once.
type Resumable struct {
	d   *Disk
	h   hash.Hash
	r   *diskReader
	end int64 // the disk's size
}

// ResumableReader returns the disk's bytes from byte done on, like Reader
// (the error that ends the disk is ErrDigest rather than io.EOF when the
// layer blob does not match its descriptor). state is the sha256 state
// (Resumable.State) of the blob's bytes before disk byte done, as a
// Resumable that had read done bytes of the disk gave it; with done == 0
// it may be nil, and the bytes of the blob before the disk are then read
// and hashed first. A state that is not one of a blob hashed up to disk
// byte done is refused (ErrHashState), so is a disk that cannot be read
// from the middle (ErrNotResumable).
func (d *Disk) ResumableReader(ctx context.Context, done int64, state []byte) (*Resumable, error) {
	if !d.CanResume() {
		return nil, fmt.Errorf("%w: layer %s is compressed, or its registry does not answer Range requests", ErrNotResumable, d.Layer.Digest)
	}
	if done < 0 || done > d.Size {
		return nil, fmt.Errorf("%w: byte %d is outside the %d-byte disk", ErrHashState, done, d.Size)
	}
	h := sha256.New()
	switch {
	case state != nil:
		var err error
		if h, err = hashstate.Restore(state, d.blobAt(done)); err != nil {
			return nil, fmt.Errorf("%w: of the blob before this point: %w", ErrHashState, err)
		}
	case done > 0:
		return nil, fmt.Errorf("%w: no state given for byte %d", ErrHashState, done)
	default:
		if err := d.hashHead(ctx, h); err != nil {
			return nil, err
		}
	}
	r, err := d.section(ctx, done, h)
	if err != nil {
		return nil, err
	}
	return &Resumable{d: d, h: h, r: r, end: d.Size}, nil
}

// Read reads the disk's next bytes. After the disk's last byte it reads
// the rest of the blob and checks the digest: the error is io.EOF when it
// matches, ErrDigest when not.
func (r *Resumable) Read(p []byte) (int, error) { return r.r.Read(p) }

// Next is Read without a copy (fetch.Nexter).
func (r *Resumable) Next(n int) ([]byte, error) { return r.r.Next(n) }

// Position is the disk byte the next Read starts at: the bytes read so
// far and those the reader started after.
func (r *Resumable) Position() int64 { return r.end - r.r.left }

// State is the sha256 state of the layer blob up to disk byte Position,
// for ResumableReader to go on from there. It must not be called while a
// Read or Next runs.
func (r *Resumable) State() ([]byte, error) {
	return hashstate.Save(r.h), nil
}

// Close stops the reads.
func (r *Resumable) Close() error { return r.r.Close() }

// verifyBuf is the read size of VerifyPrefix.
const verifyBuf = 4 << 20

// VerifyPrefix tells whether r holds the disk's first done bytes as the
// layer blob does, state being the blob's sha256 state after them
// (Resumable.State): the blob's bytes before the disk (its tar headers, a
// few KiB) are read again from the registry and the disk's from r, and the
// sha256 state they make must be state. A sparse disk's holes are not in
// the blob: there r must hold zeros. It costs one sha256 pass over the
// prefix, and none while the disk is written.
func (d *Disk) VerifyPrefix(ctx context.Context, r io.ReaderAt, done int64, state []byte) (bool, error) {
	if !d.CanResume() || done < 0 || done > d.Size {
		return false, nil
	}
	h := sha256.New()
	if err := d.hashHead(ctx, h); err != nil {
		return false, err
	}
	buf := make([]byte, min(verifyBuf, max(done, 1)))
	for _, s := range d.ranges(done) {
		w := io.Writer(h)
		if s.hole {
			w = &zeroChecker{}
		}
		if err := copySection(ctx, w, io.NewSectionReader(r, s.from, s.to-s.from), buf); err != nil {
			return false, err
		}
		if z, ok := w.(*zeroChecker); ok && z.nonZero {
			return false, nil
		}
	}
	return bytes.Equal(hashstate.Save(h), state), nil
}

// span is a range [from, to) of the disk: stored in the blob, or a hole.
type span struct {
	from, to int64
	hole     bool
}

// ranges splits the disk's first done bytes into what the blob stores and
// the holes of a sparse disk, in order.
func (d *Disk) ranges(done int64) []span {
	if d.sparse == nil {
		return []span{{0, done, false}}
	}
	var spans []span
	pos := int64(0)
	for _, s := range d.sparse.segs {
		if pos >= done {
			break
		}
		if s.off > pos {
			spans = append(spans, span{pos, min(s.off, done), true})
		}
		if s.length > 0 && s.off < done {
			spans = append(spans, span{s.off, min(s.end(), done), false})
		}
		pos = max(pos, s.end())
	}
	if pos < done {
		spans = append(spans, span{pos, done, true})
	}
	return spans
}

// zeroChecker is a writer that notes whether it was given a byte other
// than zero.
type zeroChecker struct{ nonZero bool }

func (z *zeroChecker) Write(p []byte) (int, error) {
	for _, b := range p {
		if b != 0 {
			z.nonZero = true
			break
		}
	}
	return len(p), nil
}

// copySection writes r to w in reads of buf, stopping when ctx ends.
func copySection(ctx context.Context, w io.Writer, r io.Reader, buf []byte) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := io.ReadFull(r, buf)
		w.Write(buf[:n])
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			return nil
		case err != nil:
			return err
		}
	}
}
