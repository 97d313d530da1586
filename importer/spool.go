package importer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// spool is a disk written to the scratch directory because its size was not
// known before its bytes. It is removed by remove, on success and on
// failure alike.
type spool struct {
	path string
	size int64
}

// freeSpace returns the bytes available to an unprivileged user in dir.
func freeSpace(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// writeSpool copies r into a new file in dir, at most maxSize bytes. atLeast is a lower bound of the size (the
// compressed size, when known): a directory with less free space than that
// is refused before a byte is written.
func writeSpool(ctx context.Context, dir string, r io.Reader, atLeast, maxSize int64) (*spool, error) {
	free, err := freeSpace(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: scratch directory %s: %w", ErrInvalidOptions, dir, err)
	}
	if atLeast > 0 && free < atLeast {
		return nil, fmt.Errorf("%w: scratch directory %s has %d bytes free and the disk needs more than %d; give ScratchDir a larger volume",
			ErrScratchSpace, dir, free, atLeast)
	}
	f, err := os.CreateTemp(dir, "diskimporter-spool-*.img")
	if err != nil {
		return nil, fmt.Errorf("%w: creating a spool file in %s: %w", ErrInvalidOptions, dir, err)
	}
	sp := &spool{path: f.Name()}
	n, err := copySpool(ctx, f, r, maxSize)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		sp.remove()
		if errors.Is(err, syscall.ENOSPC) {
			return nil, fmt.Errorf("%w: scratch directory %s filled up after %d bytes; give ScratchDir a larger volume: %w", ErrScratchSpace, dir, n, err)
		}
		return nil, err
	}
	sp.size = n
	return sp, nil
}

// copySpool copies r to w in 1 MiB pieces, failing with ErrTooLarge past
// maxSize bytes and stopping when ctx is done.
func copySpool(ctx context.Context, w io.Writer, r io.Reader, maxSize int64) (int64, error) {
	buf := make([]byte, 1<<20)
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		m, rerr := r.Read(buf)
		if m > 0 {
			if n+int64(m) > maxSize {
				return n, fmt.Errorf("%w: the decompressed disk passes MaxSize (%d bytes)", ErrTooLarge, maxSize)
			}
			if _, err := w.Write(buf[:m]); err != nil {
				return n, err
			}
			n += int64(m)
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}

// open reads the spool from byte off.
func (s *spool) open(_ context.Context, off int64) (io.ReadCloser, error) {
	f, err := os.Open(s.path)
	if err != nil {
		return nil, err
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func (s *spool) remove() { os.Remove(s.path) }
