package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/diskimporter/diskimporter/importer/qcow2/qcow2test"
)

// Bounds of FuzzOpen: the largest virtual size it lets Open accept, the
// most memory Open and its reads may allocate beyond what the image's
// length explains, and how long they may take.
const (
	fuzzMaxVirtualSize = 4 << 20
	fuzzAllocBase      = 64 << 20
	fuzzAllocPerByte   = 32 // times the image's length: L1 and L2 tables, a cluster per cluster read
	fuzzDeadline       = 20 * time.Second
	// fuzzMaxRead bounds the reads the input asks for: a read of 512-byte
	// compressed clusters decompresses each from its start, and the
	// fuzzer minimizes each new input with thousands of runs.
	fuzzMaxRead = 8 << 10
)

// FuzzOpen feeds go-qcow2reader, through Open, images whose header passed
// Inspect: valid images and hostile ones whose tables point anywhere (into
// the header, past the end of the file, at compressed data of any
// length, at subclusters of extended L2 entries), or whose file ends
// early. FuzzInspect mutates whole images, most of which Inspect refuses;
// here the input is small and structured instead: base picks one of the
// images of openBases, patches overwrites bytes of it anywhere or cuts it
// short (see applyPatches), and off, length and split pick a read. Images
// Inspect refuses end at once. For the others:
//
//   - Open and the reads never panic, end within fuzzDeadline (a hang
//     panics from a timer, which fails the run with the input), and
//     allocate at most fuzzAllocBase plus fuzzAllocPerByte times the
//     image's length (a table sized from a header field would not fit);
//   - Open answers as Inspect did, or with a classified error;
//   - every read returns data, io.EOF exactly at the end of the disk, or
//     an error wrapping ErrCorrupt;
//   - the disk reads the same twice, and the same in one read as in two
//     (split where the input says), wherever both give bytes.
func FuzzOpen(f *testing.F) {
	bases, seeds := openBases(f)
	for _, s := range seeds {
		f.Add(s.base, s.patches, uint32(0), uint16(4095), uint16(1000))
		f.Add(s.base, s.patches, uint32(1536), uint16(511), uint16(300))
	}
	f.Fuzz(func(t *testing.T, base uint8, patches []byte, off uint32, length, split uint16) {
		img := applyPatches(bytes.Clone(bases[int(base)%len(bases)]), patches)
		size := int64(len(img))
		want, err := Inspect(img[:min(len(img), HeadSize)], size, fuzzMaxVirtualSize)
		if err != nil {
			return
		}
		hang := time.AfterFunc(fuzzDeadline, func() {
			panic(fmt.Sprintf("Open and reads of a %d-byte image (%+v) did not end in %v", len(img), *want, fuzzDeadline))
		})
		defer hang.Stop()
		var before, after runtimeMem
		before.read()

		info, disk, err := Open(bytes.NewReader(img), size, fuzzMaxVirtualSize)
		if err != nil {
			if !isClassified(err) {
				t.Fatalf("Open: unclassified error %v", err)
			}
			return
		}
		if *info != *want {
			t.Fatalf("Open says %+v, Inspect %+v", info, want)
		}
		vsize := int64(info.VirtualSize)
		readSome(t, disk, vsize, info.ClusterSize, img)
		start := int64(off) % (vsize + 1024) // past the end at times
		n := int(length)%fuzzMaxRead + 1
		compareReads(t, disk, vsize, start, n, int(split)%(n+1))

		after.read()
		if grew, limit := after.totalAlloc-before.totalAlloc, uint64(fuzzAllocBase+fuzzAllocPerByte*len(img)); grew > limit {
			t.Fatalf("Open and reads of a %d-byte image (%+v) allocated %d bytes, over %d", len(img), *info, grew, limit)
		}
	})
}

// applyPatches changes img as patches say, and returns it. patches is a
// list of records: a 3-byte big-endian offset (modulo the image's length),
// a length byte n and n bytes (fewer if patches ends), which overwrite the
// image at the offset, as far as it goes; a record with n = 0 cuts the
// image at the offset instead.
func applyPatches(img, patches []byte) []byte {
	for len(patches) >= 4 && len(img) > 0 {
		off := int(patches[0])<<16 | int(patches[1])<<8 | int(patches[2])
		off %= len(img)
		n := int(patches[3])
		patches = patches[4:]
		if n == 0 {
			img = img[:off]
			continue
		}
		n = min(n, len(patches))
		copy(img[off:], patches[:n])
		patches = patches[n:]
	}
	return img
}

// patch returns the record of applyPatches that writes p at off.
func patch(off int64, p []byte) []byte {
	return append([]byte{byte(off >> 16), byte(off >> 8), byte(off), byte(len(p))}, p...)
}

func patch64(off int64, v uint64) []byte {
	return patch(off, binary.BigEndian.AppendUint64(nil, v))
}

// cut returns the record of applyPatches that cuts the image at off.
func cut(off int64) []byte { return patch(off, nil) }

// openSeed is a seed of FuzzOpen: a base image and patches to it.
type openSeed struct {
	base    uint8
	patches []byte
}

// read is the outcome of one ReadAt.
type read struct {
	p   []byte // the bytes it returned
	err error
}

func readAt(t *testing.T, disk io.ReaderAt, vsize, off int64, n int) read {
	t.Helper()
	p := make([]byte, n)
	m, err := disk.ReadAt(p, off)
	switch {
	case m < 0 || m > n:
		t.Fatalf("ReadAt(%d bytes at %d) = %d bytes", n, off, m)
	case err == nil && m != n:
		t.Fatalf("ReadAt(%d bytes at %d) = %d bytes and no error", n, off, m)
	case err == io.EOF && off+int64(m) != vsize && !(off > vsize && m == 0):
		t.Fatalf("ReadAt(%d bytes at %d) = %d bytes, io.EOF, not at the end of the %d-byte disk", n, off, m, vsize)
	case err == nil && off+int64(n) > vsize:
		t.Fatalf("ReadAt(%d bytes at %d) = no error past the end of the %d-byte disk", n, off, vsize)
	case err != nil && err != io.EOF && (!errors.Is(err, ErrCorrupt) || errors.Is(err, io.EOF)):
		t.Fatalf("ReadAt(%d bytes at %d): error %v does not wrap ErrCorrupt alone", n, off, err)
	}
	return read{p[:m], err}
}

// ok reports whether r read everything it could: the whole buffer, or up
// to the end of the disk.
func (r read) ok() bool { return r.err == nil || r.err == io.EOF }

// compareReads reads n bytes at off twice, then as two reads split at
// split, and checks that they agree: on the bytes every read returned,
// and on whether the whole range could be read.
func compareReads(t *testing.T, disk io.ReaderAt, vsize, off int64, n, split int) {
	t.Helper()
	whole := readAt(t, disk, vsize, off, n)
	again := readAt(t, disk, vsize, off, n)
	if !bytes.Equal(whole.p, again.p) || whole.ok() != again.ok() {
		t.Fatalf("two reads of %d bytes at %d differ: %d bytes, %v; then %d bytes, %v (first difference at %d)",
			n, off, len(whole.p), whole.err, len(again.p), again.err, firstDiff(whole.p, again.p))
	}
	first := readAt(t, disk, vsize, off, split)
	var second read
	if split < n && (first.err == nil || split == 0) {
		second = readAt(t, disk, vsize, off+int64(split), n-split)
	}
	// The bytes each read returned, where they are in the range.
	pieces := first.p
	if len(first.p) == split {
		pieces = slices.Concat(first.p, second.p)
	}
	common := min(len(whole.p), len(pieces))
	if !bytes.Equal(whole.p[:common], pieces[:common]) {
		i := firstDiff(whole.p, pieces)
		t.Fatalf("%d bytes at %d read as one and as two split at %d differ at byte %d: %#x, %#x",
			n, off, split, i, whole.p[i], pieces[i])
	}
	piecesOK := first.ok() && (split == n || first.err == io.EOF || second.ok())
	if whole.ok() != piecesOK {
		t.Fatalf("%d bytes at %d: read as one: %d bytes, %v; as two split at %d: %d bytes, %v; %d bytes, %v",
			n, off, len(whole.p), whole.err, split, len(first.p), first.err, len(second.p), second.err)
	}
}

// openBases returns the images FuzzOpen patches, each of which Inspect
// accepts, and its seeds: each image as it is, and hostile patches of the
// first one. The images are small (a few KiB where the layout allows) so
// that a run is quick: the fuzzer runs the target thousands of times to
// minimize each new input.
func openBases(tb testing.TB) ([][]byte, []openSeed) {
	tb.Helper()
	// Base 0: version 3, 512-byte clusters, data, compressed and zero
	// clusters; the hostile seeds patch its tables.
	spec := qcow2test.Spec{
		ClusterBits: 9, VirtualSize: 64 << 10,
		Data:       map[int64][]byte{0: qcow2test.Pattern(3, 512), 1: qcow2test.Pattern(4, 200)},
		Compressed: map[int64][]byte{2: qcow2test.Text(512)},
		Zero:       []int64{3},
	}
	img, lay, err := spec.Build()
	if err != nil {
		tb.Fatal(err)
	}
	bases := [][]byte{img}

	guest := slices.Concat(qcow2test.Pattern(1, 1000), make([]byte, 3000), qcow2test.Text(2048),
		make([]byte, 1024), qcow2test.Pattern(2, 700))
	featureTable := make([]byte, 48)
	copy(featureTable[2:], "dirty bit")
	for _, opts := range [][]qcow2test.Option{
		{qcow2test.ClusterBits(9), qcow2test.Compressed(), qcow2test.V2()},
		{qcow2test.ClusterBits(10), qcow2test.Compressed(), qcow2test.ZeroClusters(), qcow2test.WithVirtualSize(1 << 20),
			qcow2test.WithExtension(qcow2test.ExtFeatureTable, featureTable)},
		{qcow2test.ClusterBits(12), qcow2test.Compressed(), qcow2test.WithVirtualSize(guestSizeOdd)},
	} {
		img, err := qcow2test.Image(guest, opts...)
		if err != nil {
			tb.Fatal(err)
		}
		bases = append(bases, img)
	}
	empty, err := qcow2test.Image(nil, qcow2test.ClusterBits(9))
	if err != nil {
		tb.Fatal(err)
	}
	bases = append(bases, empty, extendedL2Seed())
	for i, img := range bases {
		if _, err := Inspect(img[:min(len(img), HeadSize)], int64(len(img)), fuzzMaxVirtualSize); err != nil {
			tb.Fatalf("base %d of FuzzOpen is refused: %v", i, err)
		}
	}

	var seeds []openSeed
	for i := range bases {
		seeds = append(seeds, openSeed{uint8(i), nil})
	}
	l2 := lay.L2Offset[0]
	for _, p := range [][]byte{
		// The L2 table is the L1 table.
		patch64(lay.L1Offset, uint64(lay.L1Offset)|l2CopiedBit),
		// The L2 table is the header.
		patch64(lay.L1Offset, 512|l2CopiedBit),
		// A data cluster past the end of the file.
		patch64(l2, 1<<40|l2CopiedBit),
		// A data cluster at offset 0, one in the middle of the file.
		slices.Concat(patch64(l2, l2CopiedBit), patch64(l2+8, uint64(lay.DataOffset[0]+512*3)|l2CopiedBit)),
		// A compressed cluster of the largest length the entry holds.
		patch64(l2+16, binary.BigEndian.Uint64(img[l2+16:])|1<<61),
		// A compressed cluster read from the L2 table itself.
		patch64(l2+16, 1<<62|uint64(l2)),
		// The zero flag on a cluster with a host offset.
		patch64(l2+24, uint64(lay.DataOffset[0])|1),
		// The file ends in the middle of a data cluster.
		cut(lay.DataOffset[1] + 100),
		// zstd compression, which the reader has no decompressor for.
		slices.Concat(patch64(qcow2test.OffIncompatible, qcow2test.IncompatibleCompressionType),
			patch(qcow2test.OffCompressionType, []byte{1})),
		// A larger disk, mostly unallocated, with a larger L1 table.
		slices.Concat(patch64(qcow2test.OffSize, 2<<20), patch(qcow2test.OffL1Size, []byte{0, 0, 0, 64})),
	} {
		seeds = append(seeds, openSeed{0, p})
	}
	// Subclusters both allocated and zero, of the extended L2 image.
	seeds = append(seeds, openSeed{uint8(len(bases) - 1), patch64(512+8, 0xFFFF<<32|0xFF)})
	return bases, seeds
}

// guestSizeOdd is a virtual size that ends inside a cluster.
const guestSizeOdd = 64<<10 + 77

// l2CopiedBit is bit 63 of an L1 or L2 entry: the refcount is 1.
const l2CopiedBit = 1 << 63

// extendedL2Seed returns an image with extended L2 entries and 16 KiB
// clusters, the smallest they allow, in two clusters where Spec.Build
// would take seven: cluster 1 holds the L1 table and doubles as the
// refcount table (no reader reads refcounts); the L2 table, which the
// reader wants 512-byte aligned only, lies at 512, in cluster 0 after the
// header, and reaches over the L1 table into cluster 1, where the data
// follows the L1 table: two allocated subclusters, then a compressed
// cluster.
func extendedL2Seed() []byte {
	const cs = 16 << 10
	const sub = cs / 32
	const l2Offset = 512
	const dataOffset = cs + 512
	data := qcow2test.Pattern(7, 2*sub)
	z := qcow2test.Deflate(slices.Concat(qcow2test.Text(cs/2), make([]byte, cs/2)))
	img := make([]byte, 2*cs)
	if dataOffset+len(data)+len(z) > len(img) {
		panic("extendedL2Seed: the data does not fit")
	}
	be := binary.BigEndian
	copy(img, qcow2test.Magic)
	be.PutUint32(img[qcow2test.OffVersion:], 3)
	be.PutUint32(img[qcow2test.OffClusterBits:], 14)
	be.PutUint64(img[qcow2test.OffSize:], 256<<10)
	be.PutUint32(img[qcow2test.OffL1Size:], 1)
	be.PutUint64(img[qcow2test.OffL1Offset:], cs)
	be.PutUint64(img[qcow2test.OffRefcountOffset:], cs)
	be.PutUint32(img[qcow2test.OffRefcountClusters:], 1)
	be.PutUint64(img[qcow2test.OffIncompatible:], qcow2test.IncompatibleExtendedL2)
	be.PutUint32(img[qcow2test.OffRefcountOrder:], 4)
	be.PutUint32(img[qcow2test.OffHeaderLength:], qcow2test.HeaderLengthV3)
	be.PutUint64(img[cs:], l2Offset|l2CopiedBit)
	l2 := img[l2Offset:]
	// Guest cluster 0: subclusters 0 and 1 stored, 4 to 7 zero, the
	// rest unallocated.
	be.PutUint64(l2[0:], dataOffset|l2CopiedBit)
	be.PutUint64(l2[8:], 0xF0<<32|0b11)
	// Guest cluster 1: compressed, just after the subclusters.
	x := 62 - (14 - 8)
	sectors := uint64(len(z)+511)/512 - 1
	be.PutUint64(l2[16:], 1<<62|sectors<<x|uint64(dataOffset+len(data)))
	// Guest cluster 2: all subclusters zero.
	be.PutUint64(l2[40:], 0xFFFFFFFF<<32)
	// Guest cluster 3: its last subcluster allocated past the end of the
	// file.
	be.PutUint64(l2[48:], 4*cs|l2CopiedBit)
	be.PutUint64(l2[56:], 1<<31)
	copy(img[dataOffset:], data)
	copy(img[dataOffset+len(data):], z)
	return img
}
