package importer_test

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/reason"
)

// TestEmptySource: a source with no byte is refused as no disk, however
// it comes (a file, an http body with or without a length, a FIFO whose
// writer ends at once, a compressed stream of nothing); a character device,
// whose size reads as 0 whatever it holds, is refused for what it is.
// Nothing is tagged. A FIFO that holds a disk still imports.
func TestEmptySource(t *testing.T) {
	t.Parallel()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	disk := diskBytes(t, 256<<10)
	for _, tc := range []struct {
		name string
		// source returns the source of the import.
		source     func(t *testing.T) string
		wantErr    error
		wantReason reason.Reason
		wantText   string
	}{
		{
			name:    "empty file",
			source:  func(t *testing.T) string { return writeFile(t, nil) },
			wantErr: importer.ErrUnsupportedFormat, wantReason: reason.UnsupportedFormat, wantText: "empty (0 bytes",
		},
		{
			name:    "empty file:// URL",
			source:  func(t *testing.T) string { return "file://" + writeFile(t, nil) },
			wantErr: importer.ErrUnsupportedFormat, wantReason: reason.UnsupportedFormat, wantText: "empty (0 bytes",
		},
		{
			name:    "/dev/null",
			source:  func(*testing.T) string { return os.DevNull },
			wantErr: importer.ErrInvalidOptions, wantReason: reason.InvalidOptions, wantText: "is a character device",
		},
		{
			name:    "/dev/zero",
			source:  func(*testing.T) string { return "/dev/zero" },
			wantErr: importer.ErrInvalidOptions, wantReason: reason.InvalidOptions, wantText: "is a character device",
		},
		{
			name:    "http Content-Length 0",
			source:  func(t *testing.T) string { return newTestSource(t, serveBytes(nil, `"empty"`)).url },
			wantErr: importer.ErrUnsupportedFormat, wantReason: reason.UnsupportedFormat, wantText: "empty (0 bytes",
		},
		{
			name: "http chunked body of 0 bytes",
			source: func(t *testing.T) string {
				return newTestSource(t, func(w http.ResponseWriter, r *http.Request) {
					w.(http.Flusher).Flush() // headers without a length, then the end
				}).url
			},
			wantErr: importer.ErrUnsupportedFormat, wantReason: reason.UnsupportedFormat, wantText: "empty (0 bytes",
		},
		{
			name:    "gzip of nothing (a spool of 0 bytes)",
			source:  func(t *testing.T) string { return newTestSource(t, serveBytes(gz.Bytes(), `"gz"`)).url },
			wantErr: importer.ErrUnsupportedFormat, wantReason: reason.UnsupportedFormat, wantText: "empty (0 bytes once decompressed",
		},
		{
			name:    "FIFO whose writer closes at once",
			source:  func(t *testing.T) string { return fifoWriting(t, nil) },
			wantErr: importer.ErrUnsupportedFormat, wantReason: reason.UnsupportedFormat, wantText: "empty (0 bytes",
		},
		{
			name:   "FIFO holding a disk",
			source: func(t *testing.T) string { return fifoWriting(t, disk) },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := newTestRegistry(t)
			o := baseOptions(reg, tc.source(t))
			o.ScratchDir = t.TempDir()
			res, err := importer.Run(testContext(t), o)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
				if res.Size != int64(len(disk)) || res.SizeFrom != importer.SizeFromSpool {
					t.Errorf("imported %d bytes, size from %s; want %d, spool", res.Size, res.SizeFrom, len(disk))
				}
				return
			}
			if err == nil {
				t.Fatalf("Run succeeded with %+v, want an error", *res)
			}
			if !errors.Is(err, tc.wantErr) || reason.Of(err) != tc.wantReason || !strings.Contains(err.Error(), tc.wantText) {
				t.Errorf("Run: %v (reason %s); want %v, reason %s, saying %q", err, reason.Of(err), tc.wantErr, tc.wantReason, tc.wantText)
			}
			reg.assertNoTag(t)
			if entries, _ := os.ReadDir(o.ScratchDir); len(entries) != 0 {
				t.Errorf("%d files left in the scratch directory", len(entries))
			}
		})
	}
}

// writeFile writes data to a new file and returns its path.
func writeFile(t *testing.T, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// fifoWriting returns the path of a new FIFO and writes data into it, then
// closes it, once a reader opens it. The writer stops when the test ends,
// read or not.
func fifoWriting(t *testing.T, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.fifo")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		w, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			return
		}
		defer w.Close()
		w.Write(data)
	}()
	t.Cleanup(func() {
		// A reader (and writer: it never blocks) of our own lets a
		// writer still waiting to open, or to write, go on.
		r, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Errorf("unblocking the FIFO's writer: %v", err)
			return
		}
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			io.Copy(io.Discard, r)
		}()
		<-done
		r.Close()
		<-drained
	})
	return p
}
