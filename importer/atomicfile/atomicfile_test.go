package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

// TestWriteRemove: Write replaces a file whole; Remove takes it away with
// the temporary files of a Write killed before its rename, and nothing
// else, whatever the name holds.
func TestWriteRemove(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"state", "odd*name[1]?.state"} {
		dir := t.TempDir()
		path := filepath.Join(dir, name)
		for _, content := range []string{"one", "two"} {
			if err := Write(path, []byte(content)); err != nil {
				t.Fatal(err)
			}
			if b, err := os.ReadFile(path); err != nil || string(b) != content {
				t.Fatalf("%s: %q, %v; want %q", name, b, err, content)
			}
		}
		killed := path + ".123456.tmp"              // what a killed Write leaves
		other := filepath.Join(dir, "stateful.tmp") // not a temp of path
		for _, f := range []string{killed, other} {
			if err := os.WriteFile(f, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if err := Remove(path); err != nil {
			t.Fatal(err)
		}
		for f, want := range map[string]bool{path: false, killed: false, other: true} {
			if _, err := os.Stat(f); (err == nil) != want {
				t.Errorf("%s: %s exists: %v, want %v", name, f, err == nil, want)
			}
		}
		if err := Remove(path); err != nil {
			t.Errorf("Remove of nothing: %v", err)
		}
	}
}
