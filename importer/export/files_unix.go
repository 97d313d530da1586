//go:build unix

package export

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// openAttempts bounds how often openPartial opens the partial file again
// when it was renamed or removed between its open and its lock.
const openAttempts = 3

// openPartial opens the partial file path of the output, creating it,
// private, never through a symbolic link, and locks it (flock, exclusive)
// until it is closed: a second export to the same output fails at once.
func openPartial(path, output string) (*os.File, error) {
	for range openAttempts {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
		if err != nil {
			return nil, linkError(path, err)
		}
		ok, err := lockFile(f, path, output)
		if ok {
			return f, nil
		}
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("%w: %s was replaced %d times while this export opened it: another export is writing %s; wait for it to end, or export to another path",
		ErrOutput, path, openAttempts, output)
}

// lockFile locks f, just opened as path, and checks that it is a regular
// file and still path (another export may have renamed or removed it
// before it unlocked it): false and no error when it is not path any more.
func lockFile(f *os.File, path, output string) (bool, error) {
	if err := flock(f); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return false, fmt.Errorf("%w: another export is writing %s (it holds %s locked); wait for it to end, or export to another path",
				ErrOutput, output, path)
		}
		return false, fmt.Errorf("%w: locking %s: %w", ErrOutput, path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrOutput, err)
	}
	if !fi.Mode().IsRegular() {
		return false, fmt.Errorf("%w: %s is not a regular file (%s); remove it", ErrOutput, path, fi.Mode().Type())
	}
	now, err := os.Lstat(path)
	if err != nil || !os.SameFile(fi, now) {
		return false, nil
	}
	if fi.Mode().Perm() != 0o600 {
		if err := f.Chmod(0o600); err != nil {
			return false, fmt.Errorf("%w: %w", ErrOutput, err)
		}
	}
	return true, nil
}

// flock takes an exclusive lock on f, or fails at once.
func flock(f *os.File) error {
	c, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := c.Control(func(fd uintptr) { ferr = syscall.Flock(int(fd), syscall.LOCK_EX|syscall.LOCK_NB) }); err != nil {
		return err
	}
	return ferr
}

// openNoFollow opens path to read it, refusing a symbolic link.
func openNoFollow(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, linkError(path, err)
	}
	return f, nil
}

// FIFO opens: how long to wait between two tries while no reader is there.
const (
	fifoFirstWait = 10 * time.Millisecond
	fifoMaxWait   = 250 * time.Millisecond
)

// openDevice opens path, an existing file that is not a regular one, to
// write it. A FIFO is opened without blocking, again until a reader is
// there or ctx ends; the file is then non-blocking, under Go's poller,
// and takes write deadlines.
func openDevice(ctx context.Context, path string, waiting func()) (*os.File, error) {
	fi, err := os.Stat(path)
	if err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrOutput, err)
		}
		return f, nil
	}
	for wait := fifoFirstWait; ; wait = min(2*wait, fifoMaxWait) {
		f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0)
		switch {
		case err == nil:
			return f, nil
		case !errors.Is(err, syscall.ENXIO): // ENXIO: no reader yet
			return nil, fmt.Errorf("%w: %w", ErrOutput, err)
		case wait == fifoFirstWait:
			waiting()
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("waiting for a reader of the FIFO %s: %w", path, context.Cause(ctx))
		case <-t.C:
		}
	}
}
