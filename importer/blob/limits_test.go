package blob_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/diskimporter/diskimporter/importer/blob"
	"github.com/diskimporter/diskimporter/importer/fetch"
	"github.com/diskimporter/diskimporter/importer/imagetest"
)

// rawImage is an image manifest given as bytes, for remote.Put.
type rawImage struct {
	b  []byte
	mt types.MediaType
}

func (r rawImage) RawManifest() ([]byte, error)        { return r.b, nil }
func (r rawImage) MediaType() (types.MediaType, error) { return r.mt, nil }

// lyingSize pushes img with its last layer's size in the manifest
// changed by delta.
func lyingSize(t *testing.T, reg *testRegistry, img v1.Image, delta int64) name.Reference {
	t.Helper()
	ref := reg.push(t, "x/lying", img)
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	m.Layers[len(m.Layers)-1].Size += delta
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Put(ref, rawImage{b, types.OCIManifestSchema1}, remote.WithTransport(reg.transport()), remote.WithAuthFromKeychain(keychain{})); err != nil {
		t.Fatal(err)
	}
	return ref
}

func TestCorruptLayers(t *testing.T) {
	t.Parallel()
	disk := randomDisk(200 << 10)
	diskTar := string(imagetest.Tar(t, "disk/disk.img", string(disk)))
	longPAX := string(paxHeader("disk/disk.img", "comment", strings.Repeat("x", 1<<20+1))) + diskTar
	// A PAX 0.1 sparse disk whose map holds more data than its entry.
	missing := string(paxHeader("disk/disk.img", "GNU.sparse.size", "102400", "GNU.sparse.numblocks", "2", "GNU.sparse.map", "0,10240,51200,10240")) +
		string(seal(header("disk/disk.img", tar.TypeReg, 10240, false))) + string(disk[:10240]) + string(make([]byte, 1024))
	for _, tc := range []struct {
		name   string
		image  func(t *testing.T, reg *testRegistry) name.Reference
		atRead bool // the error comes from reading the disk, not Open
		also   error
	}{
		{name: "PAX record over 1 MiB, uncompressed", also: tar.ErrFieldTooLong, image: func(t *testing.T, reg *testRegistry) name.Reference {
			return reg.push(t, "x/pax", imagetest.Image(t, static.NewLayer([]byte(longPAX), types.OCIUncompressedLayer)))
		}},
		{name: "PAX record over 1 MiB, gzip", also: tar.ErrFieldTooLong, image: func(t *testing.T, reg *testRegistry) name.Reference {
			return reg.push(t, "x/pax", imagetest.Image(t, static.NewLayer(imagetest.Gzip([]byte(longPAX)), types.OCILayer)))
		}},
		{name: "layer larger than its descriptor", also: blob.ErrDigest, image: func(t *testing.T, reg *testRegistry) name.Reference {
			return lyingSize(t, reg, imagetest.Image(t, diskimporterLayer(t, disk)), -1)
		}},
		{name: "layer smaller than its descriptor", also: blob.ErrDigest, image: func(t *testing.T, reg *testRegistry) name.Reference {
			return lyingSize(t, reg, imagetest.Image(t, diskimporterLayer(t, disk)), +1)
		}},
		{name: "sparse map past the entry's data, uncompressed", image: func(t *testing.T, reg *testRegistry) name.Reference {
			return reg.push(t, "x/sparse", imagetest.Image(t, static.NewLayer([]byte(missing), types.OCIUncompressedLayer)))
		}},
		{name: "sparse map past the entry's data, gzip", atRead: true, image: func(t *testing.T, reg *testRegistry) name.Reference {
			return reg.push(t, "x/sparse", imagetest.Image(t, static.NewLayer(imagetest.Gzip([]byte(missing)), types.OCILayer)))
		}},
		{name: "tar cut in the disk, gzip", atRead: true, also: io.ErrUnexpectedEOF, image: func(t *testing.T, reg *testRegistry) name.Reference {
			return reg.push(t, "x/cut", imagetest.Image(t, static.NewLayer(imagetest.Gzip([]byte(diskTar[:100<<10])), types.OCILayer)))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := newTestRegistry(t, false)
			ref := tc.image(t, reg)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := openAndRead(ctx, ref, reg.options())
			if !errors.Is(err, blob.ErrCorrupt) || (tc.also != nil && !errors.Is(err, tc.also)) {
				t.Fatalf("got %v, want ErrCorrupt (and %v)", err, tc.also)
			}
			if atRead := !strings.Contains(err.Error(), "opening:"); atRead != tc.atRead {
				t.Errorf("failed at read %v, want %v: %v", atRead, tc.atRead, err)
			}
		})
	}
}

// openAndRead opens ref's disk and reads it whole.
func openAndRead(ctx context.Context, ref name.Reference, o blob.Options) error {
	d, err := blob.Open(ctx, ref, o)
	if err != nil {
		return fmt.Errorf("opening: %w", err)
	}
	r, err := d.Reader(ctx)
	if err != nil {
		return err
	}
	defer r.Close()
	_, err = io.Copy(io.Discard, r)
	return err
}

// TestCorruptIsNotTransient: the fetch engine never retries an error of a
// corrupt image.
func TestCorruptIsNotTransient(t *testing.T) {
	for _, err := range []error{blob.ErrCorrupt, fmt.Errorf("layer x: %w: %w", blob.ErrCorrupt, tar.ErrFieldTooLong)} {
		if fetch.Transient(err) {
			t.Errorf("fetch.Transient(%v) = true, want false", err)
		}
	}
}

// manifestServer is a registry whose manifest GETs serve is given first.
func manifestServer(t *testing.T, serve func(w http.ResponseWriter, r *http.Request) bool) (string, blob.Options) {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/manifests/") || !serve(w, r) {
			reg.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "https://"), blob.Options{Transport: srv.Client().Transport}
}

func TestManifestBounds(t *testing.T) {
	t.Parallel()
	digestOf := func(b []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(b)) }
	index := func(size int64, digest string) []byte {
		return []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"manifests":[{"mediaType":%q,"digest":%q,"size":%d,"platform":{"os":"linux","architecture":"amd64"}}]}`,
			types.OCIImageIndex, types.OCIManifestSchema1, digest, size))
	}
	child := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}`)
	for _, tc := range []struct {
		name  string
		serve func(w http.ResponseWriter, r *http.Request, sent *atomic.Int64) bool
	}{
		{name: "Content-Length of 1 TiB", serve: func(w http.ResponseWriter, r *http.Request, sent *atomic.Int64) bool {
			w.Header().Set("Content-Length", fmt.Sprint(int64(1)<<40))
			n, _ := w.Write(bytes.Repeat([]byte(" "), 64<<10))
			sent.Add(int64(n))
			return true
		}},
		{name: "endless chunked body", serve: func(w http.ResponseWriter, r *http.Request, sent *atomic.Int64) bool {
			w.Header().Set("Content-Type", string(types.OCIManifestSchema1))
			chunk := bytes.Repeat([]byte(" "), 32<<10)
			for sent.Load() < 1<<30 { // bounded: 1 GiB
				n, err := w.Write(chunk)
				sent.Add(int64(n))
				if err != nil {
					break
				}
				w.(http.Flusher).Flush()
			}
			return true
		}},
		{name: "index naming a 5 MiB manifest", serve: func(w http.ResponseWriter, r *http.Request, sent *atomic.Int64) bool {
			if strings.Contains(r.URL.Path, "sha256:") {
				sent.Add(1 << 40) // must not be asked for
				return false
			}
			w.Header().Set("Content-Type", string(types.OCIImageIndex))
			w.Write(index(5<<20, digestOf(child)))
			return true
		}},
		{name: "manifest other than its index says", serve: func(w http.ResponseWriter, r *http.Request, sent *atomic.Int64) bool {
			w.Header().Set("Content-Type", string(types.OCIImageIndex))
			if strings.Contains(r.URL.Path, "sha256:") {
				w.Write(bytes.Replace(child, []byte("[]"), []byte("[ ]"), 1))
				return true
			}
			w.Write(index(int64(len(child)), digestOf(child)))
			return true
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var sent atomic.Int64
			host, o := manifestServer(t, func(w http.ResponseWriter, r *http.Request) bool { return tc.serve(w, r, &sent) })
			ref, err := name.ParseReference(host + "/x/huge:v1")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err = blob.Open(ctx, ref, o)
			if !errors.Is(err, blob.ErrCorrupt) {
				t.Fatalf("Open: %v, want ErrCorrupt", err)
			}
			if n := sent.Load(); n > 64<<20 {
				t.Errorf("the registry sent %d bytes of manifest: the read is not bounded", n)
			}
		})
	}
}
