package qcow2

import (
	"encoding/binary"
	"testing"

	"github.com/diskimporter/diskimporter/importer/qcow2/qcow2test"
)

// The images of these tests are built by package qcow2test; this file only
// adapts its Spec to the short names the tests use.

// Offsets of header fields (QEMU docs/interop/qcow2.txt).
const (
	offVersion          = qcow2test.OffVersion
	offBackingOffset    = qcow2test.OffBackingOffset
	offBackingSize      = qcow2test.OffBackingSize
	offClusterBits      = qcow2test.OffClusterBits
	offSize             = qcow2test.OffSize
	offCryptMethod      = qcow2test.OffCryptMethod
	offL1Size           = qcow2test.OffL1Size
	offL1Offset         = qcow2test.OffL1Offset
	offRefcountOffset   = qcow2test.OffRefcountOffset
	offRefcountClusters = qcow2test.OffRefcountClusters
	offNbSnapshots      = qcow2test.OffNbSnapshots
	offSnapshotsOffset  = qcow2test.OffSnapshotsOffset
	offIncompatible     = qcow2test.OffIncompatible
	offRefcountOrder    = qcow2test.OffRefcountOrder
	offHeaderLength     = qcow2test.OffHeaderLength
	offCompressionType  = qcow2test.OffCompressionType
)

const (
	extBackingFormat = qcow2test.ExtBackingFormat
	extFeatureTable  = qcow2test.ExtFeatureTable
	extBitmaps       = qcow2test.ExtBitmaps
	extEncryption    = qcow2test.ExtEncryption
	extDataFile      = qcow2test.ExtDataFile
)

// extension is a header extension a testImage carries before its end
// marker.
type extension struct {
	typ  uint32
	data []byte
}

// testImage describes a small qcow2 image with known guest content: the
// fields of qcow2test.Spec, which see.
type testImage struct {
	version     uint32 // 2 or 3; 0 means 3
	clusterBits uint32 // 0 means 16
	virtualSize uint64
	extendedL2  bool
	data        map[int64][]byte
	compressed  map[int64][]byte
	zero        []int64
	extensions  []extension
	subclusters map[int64]uint32
}

// layout is where build put the tables.
type layout struct {
	clusterSize     int64
	l1Offset        int64
	l1Size          int64
	refcountOffset  int64
	dataOffset      map[int64]int64 // guest cluster index → host offset
	headerExtOffset int64           // where the extensions start
}

func (t testImage) spec() qcow2test.Spec {
	s := qcow2test.Spec{
		Version: t.version, ClusterBits: t.clusterBits, VirtualSize: t.virtualSize, ExtendedL2: t.extendedL2,
		Data: t.data, Compressed: t.compressed, Zero: t.zero, Subclusters: t.subclusters,
	}
	for _, e := range t.extensions {
		s.Extensions = append(s.Extensions, qcow2test.Extension{Type: e.typ, Data: e.data})
	}
	return s
}

// guest returns the disk the image describes.
func (t testImage) guest() []byte { return t.spec().Guest() }

// build returns the image's bytes and where its tables are.
func (t testImage) build(tb testing.TB) ([]byte, layout) {
	tb.Helper()
	img, lay, err := t.spec().Build()
	if err != nil {
		tb.Fatal(err)
	}
	return img, layout{
		clusterSize: lay.ClusterSize, l1Offset: lay.L1Offset, l1Size: lay.L1Size,
		refcountOffset: lay.RefcountOffset, dataOffset: lay.DataOffset, headerExtOffset: lay.HeaderExtOffset,
	}
}

func deflate(tb testing.TB, p []byte) []byte {
	tb.Helper()
	return qcow2test.Deflate(p)
}

// pattern returns n bytes that differ from cluster to cluster and from
// offset to offset, so that a misplaced read shows.
func pattern(seed byte, n int) []byte { return qcow2test.Pattern(seed, n) }

// text returns n compressible bytes.
func text(n int) []byte { return qcow2test.Text(n) }

// put32 and put64 patch a header field.
func put32(img []byte, off int, v uint32) { binary.BigEndian.PutUint32(img[off:], v) }
func put64(img []byte, off int, v uint64) { binary.BigEndian.PutUint64(img[off:], v) }

// standardImage is the image most tests start from: version 3, 64 KiB
// clusters, a 1 MiB disk with two stored clusters, a compressed one, a
// zero one and unallocated ones.
func standardImage() testImage {
	return testImage{
		virtualSize: 1 << 20,
		data: map[int64][]byte{
			0: pattern(1, 64<<10),
			5: pattern(2, 1000), // the rest of the cluster reads zeros
		},
		compressed: map[int64][]byte{3: text(64 << 10)},
		zero:       []int64{4},
	}
}
