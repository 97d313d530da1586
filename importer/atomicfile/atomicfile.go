// Package atomicfile replaces small files (a state file, a checkpoint)
// whole: a reader finds the old content or the new, never a mix, also
// after a crash, and a killed writer leaves nothing that outlives the file.
package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
)

// Write replaces the file at path with b: a new file of a random name
// beside it (created exclusively, never through a link, private), synced,
// then renamed over path.
func Write(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
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

// Remove removes the file at path, if any, and the temporary files a
// Write killed before its rename left beside it.
func Remove(path string) error {
	err := os.Remove(path)
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	stale, _ := filepath.Glob(globEscape(path) + ".*.tmp")
	for _, name := range stale {
		os.Remove(name)
	}
	return err
}

// globEscape quotes the characters filepath.Match gives a meaning.
func globEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, "*", `\*`, "?", `\?`, "[", `\[`).Replace(s)
}
