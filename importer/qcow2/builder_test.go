package qcow2

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"testing"
)

// Offsets of header fields (QEMU docs/interop/qcow2.txt).
const (
	offVersion          = 4
	offBackingOffset    = 8
	offBackingSize      = 16
	offClusterBits      = 20
	offSize             = 24
	offCryptMethod      = 32
	offL1Size           = 36
	offL1Offset         = 40
	offRefcountOffset   = 48
	offRefcountClusters = 56
	offNbSnapshots      = 60
	offSnapshotsOffset  = 64
	offIncompatible     = 72
	offRefcountOrder    = 96
	offHeaderLength     = 100
	offCompressionType  = 104
)

const (
	extBackingFormat = 0xE2792ACA
	extFeatureTable  = 0x6803f857
	extBitmaps       = 0x23852875
	extEncryption    = 0x0537be77
	extDataFile      = 0x44415441
)

// extension is a header extension a testImage carries before its end
// marker.
type extension struct {
	typ  uint32
	data []byte
}

// testImage describes a small qcow2 image with known guest content, laid
// out the way qemu lays one out: header and extensions in cluster 0, then
// the refcount table, one refcount block, the L1 table, the L2 tables and
// the data clusters, each cluster-aligned.
type testImage struct {
	version     uint32 // 2 or 3; 0 means 3
	clusterBits uint32 // 0 means 16
	virtualSize uint64
	extendedL2  bool
	// Guest cluster index → content (at most a cluster) of clusters stored
	// as they are, compressed with raw deflate, or marked as reading zeros.
	data       map[int64][]byte
	compressed map[int64][]byte
	zero       []int64
	extensions []extension
	// With extended L2 entries: guest cluster index → allocation bitmap of
	// a stored cluster's 32 subclusters; all of them when missing. The
	// unallocated ones read zeros.
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

func (t testImage) defaults() testImage {
	if t.version == 0 {
		t.version = 3
	}
	if t.clusterBits == 0 {
		t.clusterBits = 16
	}
	return t
}

// guest returns the disk the image describes.
func (t testImage) guest() []byte {
	t = t.defaults()
	g := make([]byte, t.virtualSize)
	cs := int64(1) << t.clusterBits
	for _, m := range []map[int64][]byte{t.data, t.compressed} {
		for idx, content := range m {
			copy(g[idx*cs:], content)
		}
	}
	sub := cs / 32
	for idx, bitmap := range t.subclusters {
		for i := range int64(32) {
			if bitmap&(1<<i) == 0 {
				clear(g[idx*cs+i*sub : idx*cs+(i+1)*sub])
			}
		}
	}
	return g
}

// build returns the image's bytes and where its tables are.
func (t testImage) build(tb testing.TB) ([]byte, layout) {
	tb.Helper()
	t = t.defaults()
	be := binary.BigEndian
	cs := int64(1) << t.clusterBits
	entrySize := int64(8)
	if t.extendedL2 {
		entrySize = 16
	}
	l2Entries := cs / entrySize
	l1Size := (int64(t.virtualSize) + cs*l2Entries - 1) / (cs * l2Entries)
	lay := layout{clusterSize: cs, l1Size: l1Size, dataOffset: map[int64]int64{}}

	// Allocate clusters in qemu's order.
	next := cs
	alloc := func(n int64) int64 { off := next; next += n * cs; return off }
	lay.refcountOffset = alloc(1)
	refblock := alloc(1)
	lay.l1Offset = alloc(max(1, (l1Size*8+cs-1)/cs))
	l2 := map[int64]int64{} // L1 index → L2 table offset
	used := func(idx int64) {
		if _, ok := l2[idx/l2Entries]; !ok {
			l2[idx/l2Entries] = alloc(1)
		}
	}
	for idx := range t.data {
		used(idx)
	}
	for idx := range t.compressed {
		used(idx)
	}
	for _, idx := range t.zero {
		used(idx)
	}
	for idx := range t.data {
		lay.dataOffset[idx] = alloc(1)
	}
	for idx := range t.compressed {
		lay.dataOffset[idx] = alloc(1)
	}

	img := make([]byte, next)
	be.PutUint32(img[0:], 0x514649fb)
	be.PutUint32(img[offVersion:], t.version)
	be.PutUint32(img[offClusterBits:], t.clusterBits)
	be.PutUint64(img[offSize:], t.virtualSize)
	be.PutUint32(img[offL1Size:], uint32(l1Size))
	be.PutUint64(img[offL1Offset:], uint64(lay.l1Offset))
	be.PutUint64(img[offRefcountOffset:], uint64(lay.refcountOffset))
	be.PutUint32(img[offRefcountClusters:], 1)
	lay.headerExtOffset = 72
	if t.version == 3 {
		if t.extendedL2 {
			be.PutUint64(img[offIncompatible:], 1<<4)
		}
		be.PutUint32(img[offRefcountOrder:], 4)
		be.PutUint32(img[offHeaderLength:], 112)
		lay.headerExtOffset = 112
	}
	off := lay.headerExtOffset
	for _, e := range t.extensions {
		be.PutUint32(img[off:], e.typ)
		be.PutUint32(img[off+4:], uint32(len(e.data)))
		copy(img[off+8:], e.data)
		off += 8 + (int64(len(e.data))+7)&^7
	}
	// The end marker is the zeros that follow.

	// Refcounts, 16 bits each: every cluster in use is used once.
	be.PutUint64(img[lay.refcountOffset:], uint64(refblock))
	for i := int64(0); i < next/cs; i++ {
		be.PutUint16(img[refblock+2*i:], 1)
	}

	const copied = 1 << 63 // refcount is exactly 1
	for l1Idx, l2Off := range l2 {
		be.PutUint64(img[lay.l1Offset+8*l1Idx:], uint64(l2Off)|copied)
	}
	entry := func(idx int64) []byte {
		return img[l2[idx/l2Entries]+(idx%l2Entries)*entrySize:]
	}
	for idx, content := range t.data {
		host := lay.dataOffset[idx]
		copy(img[host:host+cs], content)
		be.PutUint64(entry(idx), uint64(host)|copied)
		if t.extendedL2 {
			bitmap, ok := t.subclusters[idx]
			if !ok {
				bitmap = 0xFFFFFFFF
			}
			be.PutUint64(entry(idx)[8:], uint64(bitmap))
		}
	}
	for idx, content := range t.compressed {
		host := lay.dataOffset[idx]
		full := make([]byte, cs) // qemu compresses whole clusters
		copy(full, content)
		z := deflate(tb, full)
		if int64(len(z)) > cs {
			tb.Fatalf("compressed cluster %d does not fit a cluster", idx)
		}
		copy(img[host:], z)
		x := 62 - (t.clusterBits - 8)
		sectors := uint64(len(z)+511)/512 - 1
		be.PutUint64(entry(idx), 1<<62|sectors<<x|uint64(host))
	}
	for _, idx := range t.zero {
		if t.extendedL2 {
			be.PutUint64(entry(idx)[8:], 0xFFFFFFFF<<32) // all subclusters read zeros
		} else {
			be.PutUint64(entry(idx), 1) // reads as zeros, no host cluster
		}
	}
	return img, lay
}

func deflate(tb testing.TB, p []byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	w, err := flate.NewWriter(&buf, flate.BestCompression)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := w.Write(p); err != nil {
		tb.Fatal(err)
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// pattern returns n bytes that differ from cluster to cluster and from
// offset to offset, so that a misplaced read shows.
func pattern(seed byte, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed ^ byte(i) ^ byte(i>>8)*31 ^ byte(i>>16)*7
	}
	return p
}

// text returns n compressible bytes.
func text(n int) []byte {
	return bytes.Repeat([]byte("all work and no play makes a dull disk. "), n/40+1)[:n]
}

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
