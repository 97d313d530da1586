package blob_test

import (
	"archive/tar"
	"bytes"
	"io"
	"path"
	"strings"
	"testing"

	"github.com/diskimporter/diskimporter/importer/blob"
)

// fuzzMaxDisk bounds the disks FuzzLocate expands: a sparse header may
// declare any size.
const fuzzMaxDisk = 4 << 20

// FuzzLocate checks the tar walk and sparse maps of the ranged path
// against archive/tar, which reads sparse files as tar -x does: whenever
// the ranged path finds a disk in a layer and reads it whole, archive/tar
// finds the same file and reads the same bytes. A layer the ranged path
// refuses, or cannot read to the end, is a clear failure and passes.
func FuzzLocate(f *testing.F) {
	small := sparseFile{size: 70_000, segs: [][2]int64{{0, 10}, {4096, 600}, {65_000, 5_000}, {70_000, 0}}}
	for _, format := range []string{pax00, pax01, pax10, oldGNU} {
		f.Add(sparseLayerTar(format, small, small.bytes()))
	}
	f.Add(append(append(regular("disk/disk.img", "a plain disk"), regular("x", "y")...), make([]byte, 1024)...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, layer []byte) {
		name, size, r, found, err := blob.LocateInBlob(layer)
		if err != nil || !found || size > fuzzMaxDisk {
			return
		}
		got, err := io.ReadAll(r)
		if err != nil || int64(len(got)) != size {
			return // the blob read would fail: no disk is reported
		}
		wantName, want, err := tarDisk(layer)
		if err != nil || wantName != name || !bytes.Equal(got, want) {
			t.Fatalf("the ranged path read %s, %d bytes; archive/tar: %s, %d bytes, %v; same bytes: %v",
				name, len(got), wantName, len(want), err, bytes.Equal(got, want))
		}
	})
}

// tarDisk is the first regular file under disk/ as archive/tar reads it.
func tarDisk(layer []byte) (string, []byte, error) {
	tr := tar.NewReader(bytes.NewReader(layer))
	for {
		h, err := tr.Next()
		if err != nil {
			return "", nil, err
		}
		name := path.Clean(h.Name)
		if (h.Typeflag == tar.TypeReg || h.Typeflag == tar.TypeGNUSparse) && strings.HasPrefix(strings.TrimPrefix(name, "./"), "disk/") {
			b, err := io.ReadAll(io.LimitReader(tr, fuzzMaxDisk+1))
			return name, b, err
		}
	}
}
