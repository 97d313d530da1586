// Package imagetest makes the small images and layers that tests of
// reading containerDisk images need: tars, gzip streams, OCI images of
// given layers, and a registry answer with one byte changed.
package imagetest

import (
	"archive/tar"
	"bytes"
	"net/http"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
)

// Tar is a tar of the entries, name and content pairs; a name ending in
// / is a directory.
func Tar(t testing.TB, entries ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i := 0; i < len(entries); i += 2 {
		h := &tar.Header{Name: entries[i], Mode: 0o644, Size: int64(len(entries[i+1])), Typeflag: tar.TypeReg}
		if strings.HasSuffix(entries[i], "/") {
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(entries[i+1]))
	}
	tw.Close()
	return buf.Bytes()
}

// Gzip is b compressed with gzip.
func Gzip(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

// Image is an OCI image of the layers.
func Image(t testing.TB, layers ...v1.Layer) v1.Image {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err := mutate.AppendLayers(img, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// FlipWriter flips the first byte of the body written through it.
type FlipWriter struct {
	http.ResponseWriter
	flipped bool
}

// Write writes p, its first byte flipped when it is the body's first.
func (f *FlipWriter) Write(p []byte) (int, error) {
	if !f.flipped && len(p) > 0 {
		f.flipped = true
		p = bytes.Clone(p)
		p[0] ^= 0xff
	}
	return f.ResponseWriter.Write(p)
}
