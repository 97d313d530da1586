package layer

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/stream"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func disk(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(uint64(n), 7))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func readAll(t *testing.T, l *Layer) []byte {
	t.Helper()
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestTarLayout(t *testing.T) {
	for _, size := range []int{0, 1, 511, 512, 513, 3<<20 + 17} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			content := disk(size)
			var contentDigest v1.Hash
			l, err := New(io.NopCloser(bytes.NewReader(content)), int64(size), WithDiskName("disk.qcow2"), WithBuffers(2, 4096),
				WithContentDigest(func(h v1.Hash) { contentDigest = h }))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := l.Digest(); !errors.Is(err, stream.ErrNotComputed) {
				t.Fatalf("Digest before read: %v, want ErrNotComputed", err)
			}
			if _, err := l.Size(); !errors.Is(err, stream.ErrNotComputed) {
				t.Fatalf("Size before read: %v, want ErrNotComputed", err)
			}
			blob := readAll(t, l)

			want, _ := TarSize("disk.qcow2", int64(size))
			if int64(len(blob)) != want {
				t.Errorf("blob is %d bytes, TarSize says %d", len(blob), want)
			}
			gotSize, err := l.Size()
			if err != nil || gotSize != want {
				t.Errorf("Size() = %d, %v; want %d", gotSize, err, want)
			}
			d, err := l.Digest()
			if err != nil {
				t.Fatal(err)
			}
			if d.Hex != fmt.Sprintf("%x", sha256.Sum256(blob)) {
				t.Errorf("Digest %s is not the sha256 of the blob", d)
			}
			if diff, _ := l.DiffID(); diff != d {
				t.Errorf("DiffID %s != Digest %s", diff, d)
			}
			if contentDigest.Hex != fmt.Sprintf("%x", sha256.Sum256(content)) {
				t.Errorf("content digest %s is not the sha256 of the disk", contentDigest)
			}

			tr := tar.NewReader(bytes.NewReader(blob))
			dir, err := tr.Next()
			if err != nil || dir.Name != "disk/" || dir.Typeflag != tar.TypeDir {
				t.Fatalf("first entry %+v, %v; want directory disk/", dir, err)
			}
			f, err := tr.Next()
			if err != nil {
				t.Fatal(err)
			}
			if f.Name != "disk/disk.qcow2" || f.Uid != 107 || f.Gid != 107 || f.Mode != 0o440 || !f.ModTime.Equal(ModTime) || f.Size != int64(size) {
				t.Errorf("disk entry %+v", f)
			}
			got, err := io.ReadAll(tr)
			if err != nil || !bytes.Equal(got, content) {
				t.Errorf("disk content differs (err %v)", err)
			}
			if _, err := tr.Next(); err != io.EOF {
				t.Errorf("after disk entry: %v, want io.EOF", err)
			}
		})
	}
}

func TestDeterministicDigest(t *testing.T) {
	content := disk(100000)
	var digests []v1.Hash
	for range 2 {
		l, err := New(io.NopCloser(bytes.NewReader(content)), int64(len(content)))
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, l)
		d, _ := l.Digest()
		digests = append(digests, d)
	}
	if digests[0] != digests[1] {
		t.Errorf("same disk gave digests %s and %s", digests[0], digests[1])
	}
}

func TestConsumedAndReopen(t *testing.T) {
	content := disk(70000)

	l, _ := New(io.NopCloser(bytes.NewReader(content)), int64(len(content)))
	first := readAll(t, l)
	if _, err := l.Compressed(); !errors.Is(err, stream.ErrConsumed) {
		t.Errorf("second Compressed without reopen: %v, want ErrConsumed", err)
	}
	if _, err := l.Uncompressed(); !errors.Is(err, stream.ErrConsumed) {
		t.Errorf("Uncompressed after Compressed without reopen: %v, want ErrConsumed", err)
	}

	var opens atomic.Int32
	l, _ = New(io.NopCloser(bytes.NewReader(content)), int64(len(content)))
	// A half-read first reader left open while the stream is read again,
	// as an upload that failed and goes on does.
	rc1, _ := l.Compressed()
	if _, err := io.ReadFull(rc1, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	rc2, err := l.OpenFrom(Checkpoint{}, 0, func(off int64) (io.ReadCloser, error) {
		opens.Add(1)
		return io.NopCloser(bytes.NewReader(content[off:])), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	second, err := io.ReadAll(rc2)
	if err != nil {
		t.Fatal(err)
	}
	rc2.Close()
	rc1.Close()
	if opens.Load() != 1 {
		t.Errorf("reopened %d times, want 1", opens.Load())
	}
	if !bytes.Equal(first, second) {
		t.Error("re-opened stream differs from the first")
	}
	if d, err := l.Digest(); err != nil || d.Hex != fmt.Sprintf("%x", sha256.Sum256(second)) {
		t.Errorf("digest after reopen: %v %v", d, err)
	}
}

type failingReader struct {
	data []byte
	err  error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if len(f.data) == 0 {
		return 0, f.err
	}
	n := copy(p, f.data)
	f.data = f.data[n:]
	return n, nil
}

func TestBadSources(t *testing.T) {
	content := disk(5000)
	boom := errors.New("connection reset")
	for _, tc := range []struct {
		name string
		src  io.Reader
		size int64
		want error
	}{
		{"short", bytes.NewReader(content[:4000]), 5000, ErrSizeMismatch},
		{"long", bytes.NewReader(content), 4000, ErrSizeMismatch},
		{"read error", &failingReader{data: content[:3000], err: boom}, 5000, boom},
		{"read error at the end", &failingReader{data: content, err: boom}, 5000, boom},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, _ := New(io.NopCloser(tc.src), tc.size, WithBuffers(2, 1024),
				WithContentDigest(func(v1.Hash) { t.Error("content digest reported after a failed read") }))
			rc, _ := l.Compressed()
			_, err := io.ReadAll(rc)
			rc.Close()
			if !errors.Is(err, tc.want) {
				t.Fatalf("read error %v, want %v", err, tc.want)
			}
			if _, err := l.Digest(); !errors.Is(err, stream.ErrNotComputed) {
				t.Errorf("Digest after a failed read: %v, want ErrNotComputed", err)
			}
		})
	}
}

func TestOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		opt  Option
	}{
		{"path in name", WithDiskName("../etc/passwd")},
		{"empty name", WithDiskName("")},
		{"compressed media type", WithMediaType(types.OCILayer)},
		{"one buffer", WithBuffers(1, 1<<20)},
	} {
		if _, err := New(io.NopCloser(strings.NewReader("")), 0, tc.opt); err == nil {
			t.Errorf("%s: New accepted it", tc.name)
		}
	}
	if _, err := New(io.NopCloser(strings.NewReader("")), -1); err == nil {
		t.Error("New accepted a negative size")
	}
	l, _ := New(io.NopCloser(strings.NewReader("")), 0, WithMediaType(types.DockerUncompressedLayer))
	if mt, _ := l.MediaType(); mt != types.DockerUncompressedLayer {
		t.Errorf("media type %s", mt)
	}
}

// TestCloseUnblocksReader closes a reader whose source never answers while
// a Read waits on it, as net/http does when the registry gives up early.
func TestCloseUnblocksReader(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	l, _ := New(pr, 1<<20)
	rc, _ := l.Compressed()
	readErr := make(chan error, 1)
	go func() {
		_, err := rc.Read(make([]byte, 10))
		readErr <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := rc.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-readErr:
		if err == nil {
			t.Error("Read returned no error after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read still blocked 5s after Close")
	}
	if _, err := l.Digest(); !errors.Is(err, stream.ErrNotComputed) {
		t.Errorf("Digest after Close: %v", err)
	}
}

func image(t *testing.T, l v1.Layer) v1.Image {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err := mutate.ConfigFile(img, &v1.ConfigFile{OS: "linux", Architecture: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Append(img, mutate.Addendum{Layer: l})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// push writes a one-layer image through remote.Write to an in-memory
// registry behind the given middleware and pulls the layer back.
func push(t *testing.T, l *Layer, mw func(http.Handler) http.Handler) ([]byte, error) {
	t.Helper()
	srv := httptest.NewServer(mw(registry.New(registry.Logger(nopLogger()))))
	t.Cleanup(srv.Close)
	ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://") + "/disk/test:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, image(t, l)); err != nil {
		return nil, err
	}
	img, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("pulled image has layers %v, %v", layers, err)
	}
	mt, _ := layers[0].MediaType()
	if mt != types.OCIUncompressedLayer {
		t.Errorf("pulled layer media type %s", mt)
	}
	rc, err := layers[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

func TestRemoteWrite(t *testing.T) {
	content := disk(2<<20 + 3)
	var patches, streamed atomic.Int32
	countPatches := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPatch {
				patches.Add(1)
				if r.ContentLength < 0 {
					streamed.Add(1)
				}
			}
			h.ServeHTTP(w, r)
		})
	}
	l, _ := New(io.NopCloser(bytes.NewReader(content)), int64(len(content)))
	blob, err := push(t, l, countPatches)
	if err != nil {
		t.Fatal(err)
	}
	d, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if d.Hex != fmt.Sprintf("%x", sha256.Sum256(blob)) {
		t.Errorf("layer digest %s is not the sha256 of the pushed blob", d)
	}
	// One PATCH for the layer, streamed without a length (the lazy path),
	// and one for the config blob.
	if patches.Load() != 2 || streamed.Load() != 1 {
		t.Errorf("%d PATCH requests, %d of unknown length; want 2 and 1", patches.Load(), streamed.Load())
	}
}

// TestRemoteRetry makes the registry fail the first PATCH, or redirect it:
// go-containerregistry's retry then asks the layer for its stream again,
// which fails cleanly (the importer's own upload reads it again with
// OpenFrom), never with other bytes.
func TestRemoteRetry(t *testing.T) {
	content := disk(300000)
	failFirst := func(h http.Handler) http.Handler {
		var n atomic.Int32
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPatch && n.Add(1) == 1 {
				io.CopyN(io.Discard, r.Body, 1000)
				http.Error(w, "try again", http.StatusServiceUnavailable)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
	redirectFirst := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPatch && r.URL.Query().Get("moved") == "" {
				u := *r.URL
				q := u.Query()
				q.Set("moved", "1")
				u.RawQuery = q.Encode()
				http.Redirect(w, r, u.String(), http.StatusTemporaryRedirect)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
	for name, mw := range map[string]func(http.Handler) http.Handler{"503": failFirst, "307 on PATCH": redirectFirst} {
		l, _ := New(io.NopCloser(bytes.NewReader(content)), int64(len(content)))
		if _, err := push(t, l, mw); !errors.Is(err, stream.ErrConsumed) {
			t.Errorf("%s: push: %v, want ErrConsumed", name, err)
		}
	}
}

func nopLogger() *log.Logger { return log.New(io.Discard, "", 0) }

// sizeRecorder records the length of each Write.
type sizeRecorder struct {
	bytes.Buffer
	writes []int
}

func (s *sizeRecorder) Write(p []byte) (int, error) {
	s.writes = append(s.writes, len(p))
	return s.Buffer.Write(p)
}

// TestWriteTo: io.Copy hands whole buffers to the writer, gives the same
// bytes as Read, and the digest is known afterwards.
func TestWriteTo(t *testing.T) {
	content := disk(3<<20 + 5)
	want, err := New(io.NopCloser(bytes.NewReader(content)), int64(len(content)))
	if err != nil {
		t.Fatal(err)
	}
	wantBytes := readAll(t, want)
	wantDigest, _ := want.Digest()

	l, err := New(io.NopCloser(bytes.NewReader(content)), int64(len(content)))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var w sizeRecorder
	n, err := io.Copy(&w, rc)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(wantBytes)) || !bytes.Equal(w.Bytes(), wantBytes) {
		t.Fatalf("io.Copy gave %d bytes that differ from Read's %d", n, len(wantBytes))
	}
	if d, err := l.Digest(); err != nil || d != wantDigest {
		t.Errorf("Digest() = %v, %v; want %v", d, err, wantDigest)
	}
	if len(w.writes) > 5 || w.writes[0] != 1<<20 {
		t.Errorf("writes of %v bytes, want whole 1 MiB buffers", w.writes)
	}
}

// TestDigestOf: DigestOf is the digest a layer of the same disk reports
// once read, and fails when the disk is shorter than its size.
func TestDigestOf(t *testing.T) {
	disk := bytes.Repeat([]byte("disk"), 3000)
	got, err := DigestOf(bytes.NewReader(disk), int64(len(disk)))
	if err != nil {
		t.Fatal(err)
	}
	l, err := New(io.NopCloser(bytes.NewReader(disk)), int64(len(disk)))
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := l.Compressed()
	io.Copy(io.Discard, rc)
	rc.Close()
	if want, err := l.Digest(); err != nil || got != want {
		t.Errorf("DigestOf %s, want %s (%v)", got, want, err)
	}
	if _, err := DigestOf(bytes.NewReader(disk[1:]), int64(len(disk))); err == nil {
		t.Error("a short disk gave a digest")
	}
}
