//go:build !unix

package export

import (
	"context"
	"fmt"
	"os"
)

// openPartial opens the partial file path of the output, creating it,
// private, refusing a symbolic link. It is not locked on this system.
func openPartial(path, _ string) (*os.File, error) {
	if err := refuseLink(path); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOutput, err)
	}
	return f, nil
}

// openNoFollow opens path to read it, refusing a symbolic link.
func openNoFollow(path string) (*os.File, error) {
	if err := refuseLink(path); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, linkError(path, err)
	}
	return f, nil
}

// openDevice opens path, an existing file that is not a regular one, to
// write it.
func openDevice(_ context.Context, path string, _ func()) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOutput, err)
	}
	return f, nil
}
