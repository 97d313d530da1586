package importer

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func TestWriteSpool(t *testing.T) {
	for _, tc := range []struct {
		name    string
		data    string
		atLeast int64
		maxSize int64
		want    error
	}{
		{"fits", "disk bytes", 0, 100, nil},
		{"less free space than the compressed size", "disk bytes", 1 << 62, 100, ErrScratchSpace},
		{"over max size", "disk bytes", 0, 4, ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			sp, err := writeSpool(t.Context(), dir, strings.NewReader(tc.data), tc.atLeast, tc.maxSize)
			if !errors.Is(err, tc.want) {
				t.Fatalf("writeSpool: %v, want %v", err, tc.want)
			}
			if err == nil {
				if sp.size != int64(len(tc.data)) {
					t.Errorf("spool of %d bytes, want %d", sp.size, len(tc.data))
				}
				sp.remove()
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("%d files left in the scratch directory", len(entries))
			}
		})
	}
}
