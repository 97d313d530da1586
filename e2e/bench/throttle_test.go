package main

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestThrottledSource checks that the throttled source paces a connection
// and still answers Range requests.
func TestThrottledSource(t *testing.T) {
	dir := t.TempDir()
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	if err := os.WriteFile(filepath.Join(dir, "disk.img"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	const rate = 4e6
	url, err := serve(dir, rate)
	if err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	resp, err := http.Get(url + "disk.img")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("GET: %d bytes, %v; want the file", len(got), err)
	}
	// A burst goes at once; the rest at the rate.
	if want := time.Duration(float64(len(data)-throttleBurst-throttleChunk) / rate * float64(time.Second)); took < want {
		t.Errorf("1 MiB at %g bytes/s took %v, want at least %v", rate, took, want)
	}
	if resp.Header.Get("Accept-Ranges") != "bytes" || resp.Header.Get("Last-Modified") == "" {
		t.Errorf("headers %v: want Accept-Ranges and Last-Modified", resp.Header)
	}

	req, _ := http.NewRequest(http.MethodGet, url+"disk.img", nil)
	req.Header.Set("Range", "bytes=16-31")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err = io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, data[16:32]) {
		t.Errorf("Range: %s %q %v; want 206 and %q", resp.Status, got, err, data[16:32])
	}
}
