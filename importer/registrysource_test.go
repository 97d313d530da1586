package importer_test

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/reason"
)

// TestRegistrySource imports an image the import path made, from its
// registry (docker://), into another tag: the same disk gives the same
// layer, and the source's digest is recorded.
func TestRegistrySource(t *testing.T) {
	t.Parallel()
	data := diskBytes(t, 3<<20+11)
	reg := newTestRegistry(t)
	src := newTestSource(t, serveBytes(data, `"v1"`))
	first, err := importer.Run(testContext(t), baseOptions(reg, src.url))
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, source string
		chunk        int64
	}{
		{"by tag, in 256 KiB pieces", "docker://" + first.Destination, 256 << 10},
		{"by digest, one piece", "docker://" + first.Reference, 0},
	} {
		o := baseOptions(reg, tc.source)
		o.Destination = reg.host + "/copies/disk:" + map[int64]string{0: "b", 256 << 10: "a"}[tc.chunk]
		o.SourceCAFile, o.ChunkSize = reg.caFile, tc.chunk
		res, err := importer.Run(testContext(t), o)
		if err != nil {
			t.Fatalf("%s: %v (reason %s)", tc.name, err, reason.Of(err))
		}
		if res.LayerDigest != first.LayerDigest || res.Size != first.Size || res.DiskSHA256 != first.DiskSHA256 || res.Format != "raw" {
			t.Errorf("%s: result %+v, want the layer of %+v", tc.name, *res, *first)
		}
		if res.Source != tc.source {
			t.Errorf("%s: source %q, want %q", tc.name, res.Source, tc.source)
		}
	}

	o := baseOptions(reg, "docker://"+reg.host+"/no/such:image")
	o.SourceCAFile = reg.caFile
	o.Destination = reg.host + "/copies/none:v1"
	if _, err := importer.Run(testContext(t), o); !errors.Is(err, importer.ErrSourceNotFound) {
		t.Errorf("missing image: %v, want ErrSourceNotFound", err)
	}
}

// TestRegistrySourceGzipLayer imports the disk of a containerDisk whose
// layer is gzip-compressed (as other tools build them): the blob is read
// whole and decoded, and the disk lands in an uncompressed layer.
func TestRegistrySourceGzipLayer(t *testing.T) {
	t.Parallel()
	disk := diskBytes(t, 2<<20+512)
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	tw.WriteHeader(&tar.Header{Name: "./disk/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "./disk/fedora.img", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(disk))})
	tw.Write(disk)
	tw.Close()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(tarBuf.Bytes())
	zw.Close()
	img, err := mutate.AppendLayers(empty.Image, static.NewLayer(gz.Bytes(), types.DockerLayer))
	if err != nil {
		t.Fatal(err)
	}
	reg := newTestRegistry(t)
	ref, err := name.ParseReference(reg.host + "/others/gz:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithTransport(reg.clientTransport())); err != nil {
		t.Fatal(err)
	}
	o := baseOptions(reg, "docker://"+ref.String())
	o.SourceCAFile = reg.caFile
	res, err := importer.Run(testContext(t), o)
	if err != nil {
		t.Fatalf("Run: %v (reason %s)", err, reason.Of(err))
	}
	if want := fmt.Sprintf("sha256:%x", sha256.Sum256(disk)); res.DiskSHA256 != want || res.Size != int64(len(disk)) || res.Format != "raw" {
		t.Errorf("result %+v, want the %d-byte raw disk %s", *res, len(disk), want)
	}
}
