package export

import (
	"errors"
	"fmt"
	"os"
)

// refuseLink fails when path is there but not a regular file (a symbolic
// link planted to have the export write elsewhere).
func refuseLink(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("%w: %w", ErrOutput, err)
	case fi.Mode()&os.ModeSymlink != 0:
		return symlinkError(path)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%w: %s is not a regular file (%s); remove it", ErrOutput, path, fi.Mode().Type())
	}
	return nil
}

// linkError is the error of a failed open of path: a clear one when path
// is a symbolic link; ErrOutput but for a missing file (os.ErrNotExist).
func linkError(path string, err error) error {
	if fi, lerr := os.Lstat(path); lerr == nil && fi.Mode()&os.ModeSymlink != 0 {
		return symlinkError(path)
	}
	if errors.Is(err, os.ErrNotExist) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrOutput, err)
}

// symlinkError: path, a file the export writes, is a symbolic link.
func symlinkError(path string) error {
	return fmt.Errorf("%w: %s is a symbolic link, which diskimporter does not follow there; remove it", ErrOutput, path)
}
