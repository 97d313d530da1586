package importer_test

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"fmt"
	"net/http"
	"sync"
	"testing"

	"github.com/diskimporter/diskimporter/importer"
)

// rangeLog records the length of every Range request but the first.
type rangeLog struct {
	mu      sync.Mutex
	first   bool
	longest int64
}

func (l *rangeLog) wrap(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var from, to int64
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &from, &to); err == nil {
			l.mu.Lock()
			if l.first {
				l.longest = max(l.longest, to-from+1)
			}
			l.first = true
			l.mu.Unlock()
		}
		h(w, r)
	}
}

// TestCompressedSourceChunks: a compressed source is read in
// CompressedChunkSize pieces unless ChunkSize is given; an uncompressed
// one in DefaultChunkSize pieces. Each import stores the same disk.
func TestCompressedSourceChunks(t *testing.T) {
	t.Parallel()
	disk := diskBytes(t, 24<<20)
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.NoCompression) // as long as the disk: many pieces
	zw.Write(disk)
	zw.Close()
	want := fmt.Sprintf("sha256:%x", sha256.Sum256(disk))
	for _, tc := range []struct {
		name    string
		data    []byte
		chunk   int64
		longest int64
	}{
		{"gzip", gz.Bytes(), 0, importer.CompressedChunkSize},
		{"gzip, ChunkSize given", gz.Bytes(), 4 << 20, 4 << 20},
		{"raw", disk, 0, importer.DefaultChunkSize},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var log rangeLog
			src := newTestSource(t, log.wrap(serveBytes(tc.data, `"v1"`)))
			reg := newTestRegistry(t)
			o := baseOptions(reg, src.url)
			o.ChunkSize = tc.chunk
			res, err := importer.Run(testContext(t), o)
			if err != nil {
				t.Fatal(err)
			}
			if res.DiskSHA256 != want {
				t.Errorf("disk sha256 %s, want %s", res.DiskSHA256, want)
			}
			if log.longest != tc.longest {
				t.Errorf("longest Range request after the first: %d bytes, want %d", log.longest, tc.longest)
			}
		})
	}
}

// TestSourceDiesInItsFirstBytes: the first response ends after 3 bytes,
// within the bytes read to tell a compressed source; the read goes on
// with a Range request from there and the import stores the disk.
func TestSourceDiesInItsFirstBytes(t *testing.T) {
	t.Parallel()
	disk := diskBytes(t, 3<<20)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(disk)
	zw.Close()
	var calls sync.Mutex
	first := true
	serve := serveBytes(gz.Bytes(), `"v1"`)
	src := newTestSource(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Lock()
		cut := first
		first = false
		calls.Unlock()
		if !cut {
			serve(w, r)
			return
		}
		w.Header().Set("ETag", `"v1"`)
		w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-%d/%d", gz.Len()-1, gz.Len()))
		w.Header().Set("Content-Length", fmt.Sprint(gz.Len()))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(gz.Bytes()[:3])
		w.(http.Flusher).Flush()
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	})
	reg := newTestRegistry(t)
	res, err := importer.Run(testContext(t), baseOptions(reg, src.url))
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("sha256:%x", sha256.Sum256(disk)); res.DiskSHA256 != want || res.Compression != "gzip" {
		t.Errorf("disk sha256 %s, compression %q; want %s, gzip", res.DiskSHA256, res.Compression, want)
	}
}
