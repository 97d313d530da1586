package blob_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"

	"github.com/diskimporter/diskimporter/importer/blob"
	"github.com/diskimporter/diskimporter/importer/fetch"
	"github.com/diskimporter/diskimporter/importer/imagetest"
	"github.com/diskimporter/diskimporter/layer"
)

const (
	user = "alice"
	pass = "secret"
)

// testRegistry is an in-memory registry over TLS with basic auth, whose
// blob GETs can be redirected to a "store" on another port and damaged.
type testRegistry struct {
	srv, store *httptest.Server
	host       string
	redirect   bool         // answer blob GETs with 307 to the store
	damage     atomic.Bool  // flip a byte of 206 answers past the first byte
	storeAuth  atomic.Int32 // requests at the store that carried Authorization
	blobGets   atomic.Int32 // blob GETs that reached the registry
}

func newTestRegistry(t *testing.T, redirect bool) *testRegistry {
	t.Helper()
	r := &testRegistry{redirect: redirect}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	damaging := func(w http.ResponseWriter, req *http.Request) {
		if r.damage.Load() && !strings.HasPrefix(req.Header.Get("Range"), "bytes=0-") && req.Header.Get("Range") != "" {
			w = &imagetest.FlipWriter{ResponseWriter: w}
		}
		reg.ServeHTTP(w, req)
	}
	r.store = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Header.Get("Authorization") != "" {
			r.storeAuth.Add(1)
		}
		req.URL.Path = req.URL.Query().Get("path")
		damaging(w, req)
	}))
	t.Cleanup(r.store.Close)
	r.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if u, p, ok := req.BasicAuth(); !ok || u != user || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/sha256:") {
			r.blobGets.Add(1)
			if r.redirect {
				http.Redirect(w, req, r.store.URL+"/presigned?path="+req.URL.Path+"&X-Amz-Signature=s", http.StatusTemporaryRedirect)
				return
			}
		}
		damaging(w, req)
	}))
	t.Cleanup(r.srv.Close)
	r.host = strings.TrimPrefix(r.srv.URL, "https://")
	return r
}

// transport trusts both test servers.
func (r *testRegistry) transport() http.RoundTripper {
	t := r.srv.Client().Transport.(*http.Transport).Clone()
	t.TLSClientConfig.RootCAs.AddCert(r.store.Certificate())
	return t
}

func (r *testRegistry) options() blob.Options {
	return blob.Options{
		Keychain:  keychain{},
		Transport: r.transport(),
		Fetch:     fetch.Options{Connections: 4, ChunkSize: 64 << 10, Retries: 1, RetryWait: time.Millisecond},
	}
}

type keychain struct{}

func (keychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return &authn.Basic{Username: user, Password: pass}, nil
}

// push writes img to repo:tag.
func (r *testRegistry) push(t *testing.T, repo string, img v1.Image) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(r.host + "/" + repo + ":v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithTransport(r.transport()), remote.WithAuthFromKeychain(keychain{})); err != nil {
		t.Fatal(err)
	}
	return ref
}

func randomDisk(n int) []byte {
	b := make([]byte, n)
	rng := rand.New(rand.NewPCG(uint64(n), 3))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// diskimporterLayer is the layer diskimporter writes for disk.
func diskimporterLayer(t *testing.T, disk []byte) v1.Layer {
	t.Helper()
	l, err := layer.New(io.NopCloser(bytes.NewReader(disk)), int64(len(disk)))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return static.NewLayer(b, types.OCIUncompressedLayer)
}

func zstdOf(b []byte) []byte {
	enc, _ := zstd.NewWriter(nil)
	return enc.EncodeAll(b, nil)
}

func TestOpenAndRead(t *testing.T) {
	t.Parallel()
	disk := randomDisk(700<<10 + 3)
	older := randomDisk(5000)
	other := string(randomDisk(100 << 10))
	for _, tc := range []struct {
		name       string
		layers     func(t *testing.T) []v1.Layer
		path       string
		compressed bool
		redirect   bool
	}{
		{name: "diskimporter layer", path: "disk/disk.img",
			layers: func(t *testing.T) []v1.Layer { return []v1.Layer{diskimporterLayer(t, disk)} }},
		{name: "diskimporter layer through a redirect to a store", path: "disk/disk.img", redirect: true,
			layers: func(t *testing.T) []v1.Layer { return []v1.Layer{diskimporterLayer(t, disk)} }},
		{name: "uncompressed, ./disk/ after another file", path: "disk/root.qcow2",
			layers: func(t *testing.T) []v1.Layer {
				return []v1.Layer{static.NewLayer(imagetest.Tar(t, "./notes.txt", other, "./disk/", "", "./disk/root.qcow2", string(disk)), types.DockerUncompressedLayer)}
			}},
		{name: "gzip, the last layer's disk wins", path: "disk/new.img", compressed: true,
			layers: func(t *testing.T) []v1.Layer {
				return []v1.Layer{
					static.NewLayer(imagetest.Gzip(imagetest.Tar(t, "disk/old.img", string(older))), types.OCILayer),
					static.NewLayer(imagetest.Gzip(imagetest.Tar(t, "disk/", "", "disk/new.img", string(disk), "trailer.txt", other)), types.OCILayer),
				}
			}},
		{name: "zstd through a redirect", path: "disk/disk.raw", compressed: true, redirect: true,
			layers: func(t *testing.T) []v1.Layer {
				return []v1.Layer{static.NewLayer(zstdOf(imagetest.Tar(t, "disk/disk.raw", string(disk))), types.OCILayerZStd)}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := newTestRegistry(t, tc.redirect)
			ref := reg.push(t, "disks/x", imagetest.Image(t, tc.layers(t)...))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			d, err := blob.Open(ctx, ref, reg.options())
			if err != nil {
				t.Fatal(err)
			}
			if d.Path != tc.path || d.Size != int64(len(disk)) || d.Compressed() != tc.compressed {
				t.Errorf("found %s, %d bytes, compressed %v; want %s, %d, %v", d.Path, d.Size, d.Compressed(), tc.path, len(disk), tc.compressed)
			}
			r, err := d.Reader(ctx)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			r.Close()
			if err != nil || !bytes.Equal(got, disk) {
				t.Fatalf("read %d bytes (%v), want the %d of the disk", len(got), err, len(disk))
			}
			if ra := d.ReaderAt(ctx); !tc.compressed {
				tail := make([]byte, 100)
				if _, err := ra.ReadAt(tail, int64(len(disk)-100)); err != nil && err != io.EOF {
					t.Fatal(err)
				}
				if !bytes.Equal(tail, disk[len(disk)-100:]) {
					t.Error("ReadAt gave other bytes")
				}
			} else if ra != nil {
				t.Error("ReaderAt of a compressed layer")
			}
			if n := reg.storeAuth.Load(); n != 0 {
				t.Errorf("the store got the registry's Authorization %d times", n)
			}
			if tc.redirect && reg.blobGets.Load() == 0 {
				t.Error("no blob GET went through the registry")
			}
		})
	}
}

func TestBadImages(t *testing.T) {
	t.Parallel()
	disk := randomDisk(300 << 10)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("no disk", func(t *testing.T) {
		reg := newTestRegistry(t, false)
		ref := reg.push(t, "x/nodisk", imagetest.Image(t, static.NewLayer(imagetest.Tar(t, "etc/hosts", "x", "disk/", ""), types.OCIUncompressedLayer)))
		if _, err := blob.Open(ctx, ref, reg.options()); !errors.Is(err, blob.ErrNoDisk) {
			t.Errorf("Open: %v, want ErrNoDisk", err)
		}
	})
	t.Run("index without the platform", func(t *testing.T) {
		reg := newTestRegistry(t, false)
		img := imagetest.Image(t, diskimporterLayer(t, disk))
		idx := mutate.AppendManifests(empty.Index,
			mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
			mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "s390x"}}})
		ref, _ := name.ParseReference(reg.host + "/x/index:v1")
		if err := remote.WriteIndex(ref, idx, remote.WithTransport(reg.transport()), remote.WithAuthFromKeychain(keychain{})); err != nil {
			t.Fatal(err)
		}
		_, err := blob.Open(ctx, ref, reg.options())
		if !errors.Is(err, blob.ErrPlatform) || !strings.Contains(err.Error(), "linux/arm64, linux/s390x") {
			t.Errorf("Open: %v, want ErrPlatform listing linux/arm64, linux/s390x", err)
		}
		o := reg.options()
		o.Platform = &v1.Platform{OS: "linux", Architecture: "arm64"}
		if _, err := blob.Open(ctx, ref, o); err != nil {
			t.Errorf("Open for linux/arm64: %v", err)
		}
	})
	t.Run("blob that does not match its digest", func(t *testing.T) {
		reg := newTestRegistry(t, false)
		ref := reg.push(t, "x/damaged", imagetest.Image(t, diskimporterLayer(t, disk)))
		d, err := blob.Open(ctx, ref, reg.options())
		if err != nil {
			t.Fatal(err)
		}
		reg.damage.Store(true)
		r, err := d.Reader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if _, err := io.ReadAll(r); !errors.Is(err, blob.ErrDigest) {
			t.Errorf("reading a damaged blob: %v, want ErrDigest", err)
		}
	})
	t.Run("wrong credentials", func(t *testing.T) {
		reg := newTestRegistry(t, false)
		ref := reg.push(t, "x/auth", imagetest.Image(t, diskimporterLayer(t, disk)))
		o := reg.options()
		o.Keychain = authn.NewMultiKeychain()
		if _, err := blob.Open(ctx, ref, o); err == nil || !strings.Contains(err.Error(), "401") {
			t.Errorf("Open without credentials: %v, want a 401", err)
		}
	})
}
