// Package qcow2test builds small qcow2 images with known guest content, and
// hostile variants of them, for tests. It is test support only: nothing in
// diskimporter's import path uses it.
//
// Image is the short way: it turns a guest disk (the bytes the image must
// read as) into a qcow2 image, with options for the layout (version 2 or 3,
// cluster size, compressed or explicitly zeroed clusters) and for the
// hostile variants an importer must refuse (a backing file, an external
// data file, a huge virtual size, another version or magic, a truncated
// file). Spec is the long way: it says cluster by cluster what is stored
// where, and Build reports where it put the tables, for tests that patch
// them.
//
// The package imports nothing of diskimporter, so that the tests of package
// qcow2 itself can use it.
package qcow2test

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"sync"
)

// Magic starts every qcow2 image.
const Magic = "QFI\xfb"

// Offsets of the header fields (QEMU docs/interop/qcow2.txt). The fields
// from OffIncompatible on exist in version 3 images only.
const (
	OffMagic            = 0
	OffVersion          = 4
	OffBackingOffset    = 8
	OffBackingSize      = 16
	OffClusterBits      = 20
	OffSize             = 24
	OffCryptMethod      = 32
	OffL1Size           = 36
	OffL1Offset         = 40
	OffRefcountOffset   = 48
	OffRefcountClusters = 56
	OffNbSnapshots      = 60
	OffSnapshotsOffset  = 64
	OffIncompatible     = 72
	OffCompatible       = 80
	OffAutoclear        = 88
	OffRefcountOrder    = 96
	OffHeaderLength     = 100
	OffCompressionType  = 104
)

// Header lengths as Build writes them: the version 2 header, and the
// version 3 header with its compression type byte, padded to 8 bytes.
const (
	HeaderLengthV2 = 72
	HeaderLengthV3 = 112
)

// Incompatible feature bits of a version 3 header.
const (
	IncompatibleDirty           = 1 << 0
	IncompatibleCorrupt         = 1 << 1
	IncompatibleDataFile        = 1 << 2
	IncompatibleCompressionType = 1 << 3
	IncompatibleExtendedL2      = 1 << 4
)

// Header extension types.
const (
	ExtEnd           = 0x00000000
	ExtBackingFormat = 0xE2792ACA
	ExtFeatureTable  = 0x6803f857
	ExtBitmaps       = 0x23852875
	ExtEncryption    = 0x0537be77
	ExtDataFile      = 0x44415441
)

// L2 entry flags.
const (
	l2Copied     = 1 << 63 // the cluster's refcount is exactly 1
	l2Compressed = 1 << 62
	l2Zero       = 1 << 0 // version 3: the cluster reads as zeros
)

// Extension is a header extension, written after the header in cluster 0.
type Extension struct {
	Type uint32
	Data []byte
}

// Spec describes a qcow2 image cluster by cluster. Build lays it out the
// way qemu does: the header and its extensions in cluster 0, then the
// refcount table, the refcount blocks, the L1 table, the L2 tables (in
// guest order) and the data clusters (in guest order), each
// cluster-aligned. Every cluster in use has a refcount of 1, so qemu-img
// check finds no leak or error in it.
type Spec struct {
	// Version is 2 or 3; 0 means 3.
	Version uint32
	// ClusterBits is log2 of the cluster size, 9 to 21; 0 means 16 (64 KiB,
	// qemu's default).
	ClusterBits uint32
	// VirtualSize is the size of the guest disk in bytes.
	VirtualSize uint64
	// ExtendedL2 gives the image extended L2 entries (32 subclusters per
	// cluster; version 3 only).
	ExtendedL2 bool
	// Data maps a guest cluster index to the content (at most a cluster)
	// of a cluster stored as it is; the rest of the cluster reads zeros.
	Data map[int64][]byte
	// Compressed maps a guest cluster index to the content of a cluster
	// stored compressed with raw deflate (qcow2's "zlib").
	Compressed map[int64][]byte
	// Zero lists guest clusters marked as reading zeros without a host
	// cluster (the zero flag of version 3; with extended L2 entries, all
	// subclusters marked zero).
	Zero []int64
	// Extensions are written before the end marker.
	Extensions []Extension
	// Subclusters maps, with extended L2 entries, a guest cluster index of
	// Data to the allocation bitmap of its 32 subclusters; all of them
	// when missing. The unallocated ones read zeros.
	Subclusters map[int64]uint32
}

// Layout is where Build put the tables of an image.
type Layout struct {
	ClusterSize int64
	// HeaderExtOffset is where the header extensions start: the header
	// length.
	HeaderExtOffset int64
	// ExtensionsEnd is the offset just past the extensions' end marker,
	// where qemu writes a backing file name.
	ExtensionsEnd    int64
	RefcountOffset   int64 // the refcount table
	RefcountClusters int64 // clusters of the refcount table
	RefblockOffset   int64 // the first refcount block; the others follow it
	Refblocks        int64
	L1Offset         int64
	L1Size           int64           // entries
	L2Offset         map[int64]int64 // L1 index → L2 table offset
	DataOffset       map[int64]int64 // guest cluster index → host offset
	Size             int64           // the file's length
}

func (s Spec) withDefaults() Spec {
	if s.Version == 0 {
		s.Version = 3
	}
	if s.ClusterBits == 0 {
		s.ClusterBits = 16
	}
	return s
}

// Guest returns the disk the image reads as: VirtualSize bytes, so only for
// specs of a size that fits in memory.
func (s Spec) Guest() []byte {
	s = s.withDefaults()
	g := make([]byte, s.VirtualSize)
	cs := int64(1) << s.ClusterBits
	for _, m := range []map[int64][]byte{s.Data, s.Compressed} {
		for idx, content := range m {
			copy(g[idx*cs:], content)
		}
	}
	sub := cs / 32
	for idx, bitmap := range s.Subclusters {
		for i := range int64(32) {
			if bitmap&(1<<i) == 0 {
				clear(g[idx*cs+i*sub : idx*cs+(i+1)*sub])
			}
		}
	}
	return g
}

// Build returns the image's bytes and where its tables are. It fails on a
// spec it cannot lay out: a version other than 2 or 3, a cluster size out
// of qemu's range, a cluster index beyond the L1 table or given twice, content
// larger than a cluster, a compressed cluster that does not fit one, or
// extensions that do not fit cluster 0. Anything else, including what a
// reader must refuse (extended L2 entries with small clusters, zero
// clusters in a version 2 image), it builds as told.
func (s Spec) Build() ([]byte, Layout, error) {
	s = s.withDefaults()
	if s.Version != 2 && s.Version != 3 {
		return nil, Layout{}, fmt.Errorf("qcow2test: version %d: Build lays out versions 2 and 3 (patch the field with WithVersion)", s.Version)
	}
	if s.ClusterBits < 9 || s.ClusterBits > 21 {
		return nil, Layout{}, fmt.Errorf("qcow2test: cluster bits %d: want 9 to 21", s.ClusterBits)
	}
	be := binary.BigEndian
	cs := int64(1) << s.ClusterBits
	entrySize := int64(8)
	if s.ExtendedL2 {
		entrySize = 16
	}
	l2Entries := cs / entrySize
	span := uint64(cs * l2Entries) // guest bytes one L1 entry maps
	l1Size := s.VirtualSize / span
	if s.VirtualSize%span != 0 {
		l1Size++
	}
	if l1Size > math.MaxUint32 || l1Size*8 > 1<<40 {
		return nil, Layout{}, fmt.Errorf("qcow2test: a virtual size of %d bytes needs %d L1 entries", s.VirtualSize, l1Size)
	}
	lay := Layout{
		ClusterSize: cs, L1Size: int64(l1Size),
		L2Offset: map[int64]int64{}, DataOffset: map[int64]int64{},
	}

	// Check the clusters and compress the compressed ones.
	seen := map[int64]bool{}
	check := func(idx int64, content []byte) error {
		switch {
		case idx < 0 || uint64(idx/l2Entries) >= l1Size:
			// Past the end of the disk but within its last L2 table is
			// allowed: no reader reads it.
			return fmt.Errorf("qcow2test: guest cluster %d has no L1 entry in the %d-byte disk", idx, s.VirtualSize)
		case seen[idx]:
			return fmt.Errorf("qcow2test: guest cluster %d given twice", idx)
		case int64(len(content)) > cs:
			return fmt.Errorf("qcow2test: %d bytes of content for guest cluster %d of %d bytes", len(content), idx, cs)
		}
		seen[idx] = true
		return nil
	}
	dataIdx, compIdx := sortedKeys(s.Data), sortedKeys(s.Compressed)
	zeroIdx := slices.Sorted(slices.Values(s.Zero))
	for _, idx := range dataIdx {
		if err := check(idx, s.Data[idx]); err != nil {
			return nil, Layout{}, err
		}
	}
	deflated := map[int64][]byte{}
	for _, idx := range compIdx {
		if err := check(idx, s.Compressed[idx]); err != nil {
			return nil, Layout{}, err
		}
		full := make([]byte, cs) // qemu compresses whole clusters
		copy(full, s.Compressed[idx])
		z := Deflate(full)
		if int64(len(z)) > cs {
			return nil, Layout{}, fmt.Errorf("qcow2test: compressed guest cluster %d takes %d bytes, more than a cluster", idx, len(z))
		}
		deflated[idx] = z
	}
	for _, idx := range zeroIdx {
		if err := check(idx, nil); err != nil {
			return nil, Layout{}, err
		}
	}
	for idx := range s.Subclusters {
		if _, ok := s.Data[idx]; !ok {
			return nil, Layout{}, fmt.Errorf("qcow2test: subcluster bitmap for guest cluster %d, which is not in Data", idx)
		}
	}

	// Count the clusters, then find how many refcount blocks (of cs/2
	// 16-bit entries) and refcount table clusters (of cs/8 entries) cover
	// them and themselves.
	l1Clusters := max(1, (int64(l1Size)*8+cs-1)/cs)
	var l1Used []int64
	for _, idx := range slices.Concat(dataIdx, compIdx, zeroIdx) {
		l1Used = append(l1Used, idx/l2Entries)
	}
	slices.Sort(l1Used)
	l1Used = slices.Compact(l1Used)
	others := 1 + l1Clusters + int64(len(l1Used)) + int64(len(dataIdx)+len(compIdx))
	refblocks, rtClusters := int64(1), int64(1)
	for {
		nb := (others + rtClusters + refblocks + cs/2 - 1) / (cs / 2)
		nrt := (nb*8 + cs - 1) / cs
		if nb == refblocks && nrt == rtClusters {
			break
		}
		refblocks, rtClusters = nb, nrt
	}

	// Allocate in qemu's order.
	next := cs
	alloc := func(n int64) int64 { off := next; next += n * cs; return off }
	lay.RefcountOffset, lay.RefcountClusters = alloc(rtClusters), rtClusters
	lay.RefblockOffset, lay.Refblocks = alloc(refblocks), refblocks
	lay.L1Offset = alloc(l1Clusters)
	for _, l1Idx := range l1Used {
		lay.L2Offset[l1Idx] = alloc(1)
	}
	for _, idx := range slices.Concat(dataIdx, compIdx) {
		lay.DataOffset[idx] = alloc(1)
	}
	lay.Size = next
	img := make([]byte, next)

	// The header.
	copy(img, Magic)
	be.PutUint32(img[OffVersion:], s.Version)
	be.PutUint32(img[OffClusterBits:], s.ClusterBits)
	be.PutUint64(img[OffSize:], s.VirtualSize)
	be.PutUint32(img[OffL1Size:], uint32(l1Size))
	be.PutUint64(img[OffL1Offset:], uint64(lay.L1Offset))
	be.PutUint64(img[OffRefcountOffset:], uint64(lay.RefcountOffset))
	be.PutUint32(img[OffRefcountClusters:], uint32(rtClusters))
	lay.HeaderExtOffset = HeaderLengthV2
	if s.Version == 3 {
		if s.ExtendedL2 {
			be.PutUint64(img[OffIncompatible:], IncompatibleExtendedL2)
		}
		be.PutUint32(img[OffRefcountOrder:], 4)
		be.PutUint32(img[OffHeaderLength:], HeaderLengthV3)
		lay.HeaderExtOffset = HeaderLengthV3
	}
	off := lay.HeaderExtOffset
	for _, e := range s.Extensions {
		n := 8 + (int64(len(e.Data))+7)&^7
		if off+n+8 > cs {
			return nil, Layout{}, fmt.Errorf("qcow2test: the header extensions do not fit the %d-byte cluster 0", cs)
		}
		be.PutUint32(img[off:], e.Type)
		be.PutUint32(img[off+4:], uint32(len(e.Data)))
		copy(img[off+8:], e.Data)
		off += n
	}
	if off+8 > cs {
		return nil, Layout{}, fmt.Errorf("qcow2test: the header does not fit the %d-byte cluster 0", cs)
	}
	lay.ExtensionsEnd = off + 8 // the end marker is the zeros there

	// Refcounts, 16 bits each: every cluster in use is used once.
	for i := range refblocks {
		be.PutUint64(img[lay.RefcountOffset+8*i:], uint64(lay.RefblockOffset+i*cs))
	}
	for i := range next / cs {
		be.PutUint16(img[lay.RefblockOffset+2*i:], 1)
	}

	for l1Idx, l2Off := range lay.L2Offset {
		be.PutUint64(img[lay.L1Offset+8*l1Idx:], uint64(l2Off)|l2Copied)
	}
	entry := func(idx int64) []byte {
		return img[lay.L2Offset[idx/l2Entries]+(idx%l2Entries)*entrySize:]
	}
	for _, idx := range dataIdx {
		host := lay.DataOffset[idx]
		copy(img[host:host+cs], s.Data[idx])
		be.PutUint64(entry(idx), uint64(host)|l2Copied)
		if s.ExtendedL2 {
			bitmap, ok := s.Subclusters[idx]
			if !ok {
				bitmap = 0xFFFFFFFF
			}
			be.PutUint64(entry(idx)[8:], uint64(bitmap))
		}
	}
	for _, idx := range compIdx {
		host, z := lay.DataOffset[idx], deflated[idx]
		copy(img[host:], z)
		x := 62 - (s.ClusterBits - 8)
		sectors := uint64(len(z)+511)/512 - 1 // additional 512-byte sectors
		be.PutUint64(entry(idx), l2Compressed|sectors<<x|uint64(host))
	}
	for _, idx := range zeroIdx {
		if s.ExtendedL2 {
			be.PutUint64(entry(idx)[8:], 0xFFFFFFFF<<32) // all subclusters read zeros
		} else {
			be.PutUint64(entry(idx), l2Zero) // reads as zeros, no host cluster
		}
	}
	return img, lay, nil
}

func sortedKeys(m map[int64][]byte) []int64 {
	keys := make([]int64, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Deflate returns p compressed with raw deflate (no zlib header), as qcow2
// stores a compressed cluster.
func Deflate(p []byte) []byte {
	var buf bytes.Buffer
	w, _ := deflaters.Get().(*flate.Writer)
	if w == nil {
		w, _ = flate.NewWriter(&buf, flate.BestCompression) // fails only for a bad level
	} else {
		w.Reset(&buf)
	}
	w.Write(p) // a bytes.Buffer does not fail
	w.Close()
	deflaters.Put(w)
	return buf.Bytes()
}

// deflaters keeps flate writers, which allocate about a MiB each, for
// reuse: an image of small clusters deflates thousands of them.
var deflaters sync.Pool

// Pattern returns n bytes that differ from cluster to cluster and from
// offset to offset, so that a misplaced read shows. Different seeds give
// different bytes.
func Pattern(seed byte, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed ^ byte(i) ^ byte(i>>8)*31 ^ byte(i>>16)*7
	}
	return p
}

// Text returns n compressible bytes.
func Text(n int) []byte {
	return bytes.Repeat([]byte("all work and no play makes a dull disk. "), n/40+1)[:n]
}
