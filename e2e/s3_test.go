package e2e

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diskimporter/diskimporter/e2e/registry"
)

// TestS3Store: a registry whose data is in a real S3 store (MinIO over
// TLS), which answers blob GETs with 307s to presigned URLs of the store,
// as users run distribution. An import goes in; an export and a docker://
// import read the layer back through the presigned redirect with Range
// requests; a presigned URL that expires mid-transfer is asked for again;
// and nothing that authenticates to the registry reaches the store.
func TestS3Store(t *testing.T) {
	needE2E(t)
	t.Parallel()
	front := newStoreFront(t)
	r := registry.StartT(t, registry.Options{S3: &registry.S3Options{RedirectEndpoint: front.URL}})
	front.serve(t, r)
	disk := exportDisk(48<<20, 32<<20)
	src := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("ETag", `"s3-disk"`)
		http.ServeContent(w, req, "disk.img", time.Unix(0, 0), bytes.NewReader(disk))
	}))
	t.Cleanup(src.Close)
	dest := r.Addr + "/" + newRepo(t) + ":v1"
	imported := parseSuccess(t, runImport(t, childEnv(t, credsEnv(r)...), importArgs(r, src.URL+"/disk.img", dest)...))

	t.Run("export", func(t *testing.T) {
		exportThroughStore(t, r, front, dest, disk)
	})
	t.Run("docker import", func(t *testing.T) {
		front.reset()
		env := childEnv(t, append(credsEnv(r), "DISKIMPORTER_SOURCE_USERNAME="+r.Username, "DISKIMPORTER_SOURCE_PASSWORD="+r.Password)...)
		res := parseSuccess(t, runImport(t, env, importArgs(r, "docker://"+dest, r.Addr+"/"+newRepo(t)+":v1", "--source-ca-file", r.CAFile)...))
		if res.LayerDigest != imported.LayerDigest {
			t.Errorf("layer %s, want the first import's %s", res.LayerDigest, imported.LayerDigest)
		}
		front.check(t, r)
	})
	t.Run("expired presigned URL", func(t *testing.T) {
		front.reset()
		front.expireAfter(2)
		exportThroughStore(t, r, front, dest, disk)
		if front.stats().expired == 0 {
			t.Error("no request was refused as expired: the test shows nothing")
		}
	})
}

// exportThroughStore exports dest from r and checks the file is disk, read
// with Range requests through front.
func exportThroughStore(t *testing.T, r *registry.Registry, front *storeFront, dest string, disk []byte) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "disk.img")
	res := runExport(t, exportEnv(t, r), "--source", dest, "--output", out, "--ca-file", r.CAFile, "--log-format", "json")
	exportSuccess(t, res)
	got, err := os.ReadFile(out)
	if err != nil || !bytes.Equal(got, disk) {
		t.Fatalf("the exported disk differs from the imported one (%v)", err)
	}
	if s := front.stats(); s.ranged < 2 {
		t.Errorf("the store saw %d Range GETs, want the layer read in parallel ranges", s.ranged)
	}
	front.check(t, r)
}

// storeFront stands where the registry's presigned URLs point
// (redirectendpoint) and forwards to the store with the Host it received,
// which the signature covers. It records what reaches the store, and can
// refuse, from a point on, the URLs signed before it as expired, as S3
// does once a URL's lifetime has passed.
type storeFront struct {
	*registry.Front
	mu       sync.Mutex
	s        frontStats
	expireAt int       // after this many requests, expire what was signed before; 0: never
	cutover  time.Time // URLs signed (X-Amz-Date) before it are refused
}

// frontStats counts what reached the front.
type frontStats struct {
	requests, ranged, expired int
	headers                   []http.Header
	queries                   []string
}

func newStoreFront(t *testing.T) *storeFront {
	t.Helper()
	front, err := registry.NewFront()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(front.Close)
	f := &storeFront{Front: front}
	front.Intercept = func(w http.ResponseWriter, req *http.Request) bool {
		if !f.record(req) {
			return false
		}
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>`)
		return true
	}
	return f
}

// serve forwards to r's store.
func (f *storeFront) serve(t *testing.T, r *registry.Registry) {
	t.Helper()
	if err := f.Serve(r); err != nil {
		t.Fatal(err)
	}
}

// record notes req and reports whether to refuse it as expired.
func (f *storeFront) record(req *http.Request) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.s.requests++
	f.s.headers = append(f.s.headers, req.Header.Clone())
	f.s.queries = append(f.s.queries, req.URL.RawQuery)
	if req.Header.Get("Range") != "" {
		f.s.ranged++
	}
	signed, err := time.Parse("20060102T150405Z", req.URL.Query().Get("X-Amz-Date"))
	if err != nil {
		return false // not presigned: check reports it
	}
	if f.expireAt > 0 && f.s.requests > f.expireAt && f.cutover.IsZero() {
		// Signatures have a resolution of a second: the URL that expires
		// must be from an earlier one than its replacement. Wait for the
		// next second (under the lock: every request waits), as time
		// passes before a real expiry.
		f.cutover = signed.Add(time.Second)
		time.Sleep(time.Until(f.cutover))
	}
	if !f.cutover.IsZero() && signed.Before(f.cutover) {
		f.s.expired++
		return true
	}
	return false
}

// expireAfter makes every URL signed before the nth request from now on
// refused as expired.
func (f *storeFront) expireAfter(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expireAt = n
}

func (f *storeFront) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.s, f.expireAt, f.cutover = frontStats{}, 0, time.Time{}
}

func (f *storeFront) stats() frontStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.s
}

// check fails t if a request reached the store with a credential of the
// registry or any Authorization, or without a presigned query.
func (f *storeFront) check(t *testing.T, r *registry.Registry) {
	t.Helper()
	s := f.stats()
	if s.requests == 0 {
		t.Fatal("nothing reached the store: the registry did not redirect")
	}
	for i, h := range s.headers {
		for k, v := range h {
			joined := strings.Join(v, ",")
			if strings.EqualFold(k, "Authorization") || strings.EqualFold(k, "Cookie") ||
				strings.Contains(joined, r.Password) || strings.Contains(joined, r.Username) {
				t.Errorf("request %d to the store carried %s: %s", i, k, joined)
			}
		}
		if !strings.Contains(s.queries[i], "X-Amz-Signature=") {
			t.Errorf("request %d to the store is not presigned: %q", i, s.queries[i])
		}
	}
}
