package qcow2

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

var sentinels = []error{ErrNotQCOW2, ErrCorrupt, ErrUnsupported, ErrBackingFile, ErrDataFile, ErrTooLarge}

// isClassified reports whether err wraps one of the package's errors.
func isClassified(err error) bool {
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

func TestInspectValid(t *testing.T) {
	tests := []struct {
		name string
		img  testImage
		want Info
	}{
		{
			name: "v3 64 KiB clusters",
			img:  standardImage(),
			want: Info{Version: 3, VirtualSize: 1 << 20, ClusterBits: 16, ClusterSize: 64 << 10, CompressionType: "zlib", L1Size: 1, RefcountOrder: 4, HeaderLength: 112},
		},
		{
			name: "v2 64 KiB clusters",
			img:  testImage{version: 2, virtualSize: 1 << 20},
			want: Info{Version: 2, VirtualSize: 1 << 20, ClusterBits: 16, ClusterSize: 64 << 10, CompressionType: "zlib", L1Size: 1, RefcountOrder: 4, HeaderLength: 72},
		},
		{
			name: "v3 512 B clusters, several L1 entries",
			img:  testImage{clusterBits: 9, virtualSize: 100 << 10},
			want: Info{Version: 3, VirtualSize: 100 << 10, ClusterBits: 9, ClusterSize: 512, CompressionType: "zlib", L1Size: 4, RefcountOrder: 4, HeaderLength: 112},
		},
		{
			name: "v3 2 MiB clusters",
			img:  testImage{clusterBits: 21, virtualSize: 3 << 30},
			want: Info{Version: 3, VirtualSize: 3 << 30, ClusterBits: 21, ClusterSize: 2 << 20, CompressionType: "zlib", L1Size: 1, RefcountOrder: 4, HeaderLength: 112},
		},
		{
			name: "extended L2",
			img:  testImage{clusterBits: 14, virtualSize: 64 << 20, extendedL2: true},
			want: Info{Version: 3, VirtualSize: 64 << 20, ClusterBits: 14, ClusterSize: 16 << 10, CompressionType: "zlib", L1Size: 4, RefcountOrder: 4, HeaderLength: 112},
		},
		{
			name: "empty disk",
			img:  testImage{virtualSize: 0},
			want: Info{Version: 3, ClusterBits: 16, ClusterSize: 64 << 10, CompressionType: "zlib", RefcountOrder: 4, HeaderLength: 112},
		},
		{
			name: "harmless extensions",
			img: testImage{virtualSize: 1 << 20, extensions: []extension{
				{extFeatureTable, make([]byte, 3*48)},
				{extBitmaps, make([]byte, 24)},
				{0x12345678, []byte("unknown, ignored")},
			}},
			want: Info{Version: 3, VirtualSize: 1 << 20, ClusterBits: 16, ClusterSize: 64 << 10, CompressionType: "zlib", L1Size: 1, RefcountOrder: 4, HeaderLength: 112},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, _ := tt.img.build(t)
			head := img[:min(len(img), HeadSize)]
			for _, size := range []int64{int64(len(img)), -1} {
				info, err := Inspect(head, size, 0)
				if err != nil {
					t.Fatalf("Inspect(fileSize %d): %v", size, err)
				}
				if *info != tt.want {
					t.Errorf("Inspect(fileSize %d) = %+v, want %+v", size, *info, tt.want)
				}
			}
		})
	}
}

// mutation changes a valid image (standardImage, 64 KiB clusters, its L1
// table in cluster 3) into a bad one.
type mutation func(tb testing.TB, img []byte) []byte

func set32(off int, v uint32) mutation {
	return func(_ testing.TB, img []byte) []byte { put32(img, off, v); return img }
}

func set64(off int, v uint64) mutation {
	return func(_ testing.TB, img []byte) []byte { put64(img, off, v); return img }
}

// withExtensions writes exts after the 112-byte header of a version 3
// image, followed by the end marker.
func withExtensions(exts []extension) mutation {
	return func(_ testing.TB, img []byte) []byte {
		off := 112
		for _, e := range exts {
			put32(img, off, e.typ)
			put32(img, off+4, uint32(len(e.data)))
			copy(img[off+8:], e.data)
			off += 8 + (len(e.data)+7)&^7
		}
		put64(img, off, 0)
		return img
	}
}

// withBackingFile names a backing file, written at offset 0x200 of the
// header cluster, as qemu writes it after the header extensions.
func withBackingFile(name string) mutation {
	return func(_ testing.TB, img []byte) []byte {
		copy(img[0x200:], name)
		put64(img, offBackingOffset, 0x200)
		put32(img, offBackingSize, uint32(len(name)))
		return img
	}
}

// rejectCase is a bad image: standardImage changed by mutate.
type rejectCase struct {
	name     string
	mutate   mutation
	fileSize int64 // 0 means the image's length
	max      uint64
	want     error
	wantMsg  string
}

func rejectCases() []rejectCase {
	const cs = 64 << 10
	return []rejectCase{
		{name: "wrong magic", mutate: set32(0, 0x514649fa), want: ErrNotQCOW2},
		{name: "raw disk", mutate: func(_ testing.TB, img []byte) []byte { return make([]byte, len(img)) }, want: ErrNotQCOW2},
		{name: "version 1", mutate: set32(offVersion, 1), want: ErrUnsupported, wantMsg: "qcow"},
		{name: "version 0", mutate: set32(offVersion, 0), want: ErrUnsupported},
		{name: "version 4", mutate: set32(offVersion, 4), want: ErrUnsupported},
		{name: "cluster_bits 8", mutate: set32(offClusterBits, 8), want: ErrCorrupt, wantMsg: "cluster_bits"},
		{name: "cluster_bits 22", mutate: set32(offClusterBits, 22), want: ErrCorrupt, wantMsg: "cluster_bits"},
		{name: "cluster_bits 62", mutate: set32(offClusterBits, 62), want: ErrCorrupt, wantMsg: "cluster_bits"},
		{name: "cluster_bits 2^32-1", mutate: set32(offClusterBits, math.MaxUint32), want: ErrCorrupt},
		{name: "l1_size 0xFFFFFFF0", mutate: set32(offL1Size, 0xFFFFFFF0), want: ErrCorrupt, wantMsg: "l1_size"},
		{name: "l1_size just over qemu's bound", mutate: set32(offL1Size, 4<<20+1), want: ErrCorrupt, wantMsg: "l1_size"},
		{name: "l1_size too small for the disk", mutate: set64(offSize, 1<<40), want: ErrCorrupt, wantMsg: "too small"},
		{name: "l1_size 0", mutate: set32(offL1Size, 0), want: ErrCorrupt},
		{name: "L1 table past the end of the file", mutate: set64(offL1Offset, 100*cs), want: ErrCorrupt, wantMsg: "past the end"},
		{name: "L1 table straddles the end of the file", mutate: func(t testing.TB, img []byte) []byte {
			return set64(offL1Offset, uint64(len(img)))(t, img)
		}, want: ErrCorrupt, wantMsg: "past the end"},
		{name: "L1 table offset misaligned", mutate: set64(offL1Offset, 3*cs+8), want: ErrCorrupt, wantMsg: "aligned"},
		{name: "L1 table offset 0", mutate: set64(offL1Offset, 0), want: ErrCorrupt},
		{name: "L1 table offset overflows", mutate: set64(offL1Offset, math.MaxUint64&^(cs-1)), fileSize: -1, want: ErrCorrupt},
		{name: "refcount table misaligned", mutate: set64(offRefcountOffset, cs+512), want: ErrCorrupt, wantMsg: "aligned"},
		{name: "refcount table past the end", mutate: set64(offRefcountOffset, 1<<40), want: ErrCorrupt, wantMsg: "past the end"},
		{name: "no refcount table", mutate: set32(offRefcountClusters, 0), want: ErrCorrupt},
		{name: "refcount table too large", mutate: set32(offRefcountClusters, math.MaxUint32), want: ErrCorrupt},
		{name: "refcount table at 0", mutate: set64(offRefcountOffset, 0), want: ErrCorrupt},
		{name: "refcount_order 7", mutate: set32(offRefcountOrder, 7), want: ErrCorrupt, wantMsg: "refcount_order"},
		{name: "too many snapshots", mutate: set32(offNbSnapshots, maxSnapshots+1), want: ErrCorrupt},
		{name: "snapshot table misaligned", mutate: set64(offSnapshotsOffset, 12), want: ErrCorrupt},
		{name: "snapshot table past the end", mutate: func(t testing.TB, img []byte) []byte {
			put32(img, offNbSnapshots, 1)
			put64(img, offSnapshotsOffset, uint64(len(img)))
			return img
		}, want: ErrCorrupt},
		{name: "header_length 96", mutate: set32(offHeaderLength, 96), want: ErrCorrupt, wantMsg: "header_length"},
		{name: "header_length not a multiple of 8", mutate: set32(offHeaderLength, 108), want: ErrCorrupt, wantMsg: "header_length"},
		{name: "header_length over the cluster", mutate: set32(offHeaderLength, cs+8), want: ErrCorrupt, wantMsg: "header_length"},
		{name: "header_length 2^32-8", mutate: set32(offHeaderLength, math.MaxUint32-7), want: ErrCorrupt},
		{name: "header_length past head", mutate: func(t testing.TB, _ []byte) []byte {
			// A standard image with 2 MiB clusters instead.
			ti := standardImage()
			ti.clusterBits = 21
			img, _ := ti.build(t)
			put32(img, offHeaderLength, 1<<20)
			return img[:HeadSize]
		}, fileSize: -1, want: ErrCorrupt},
		{name: "backing file", mutate: withBackingFile("/etc/hostname"), want: ErrBackingFile, wantMsg: `"/etc/hostname"`},
		{name: "relative backing file", mutate: withBackingFile("../../secret"), want: ErrBackingFile, wantMsg: `"../../secret"`},
		{name: "backing file name past head", mutate: func(t testing.TB, img []byte) []byte {
			put64(img, offBackingOffset, 1<<40)
			put32(img, offBackingSize, 10)
			return img
		}, want: ErrBackingFile},
		{name: "backing file size without offset", mutate: set32(offBackingSize, 5), want: ErrBackingFile, wantMsg: "(5 bytes at offset 0)"},
		{name: "long backing file name is cut", mutate: withBackingFile(strings.Repeat("a", 1000)), want: ErrBackingFile, wantMsg: `"` + strings.Repeat("a", 256) + `"`},
		{name: "backing file in a v2 image", mutate: func(t testing.TB, _ []byte) []byte {
			img, _ := testImage{version: 2, virtualSize: 1 << 20}.build(t)
			return withBackingFile("/etc/passwd")(t, img)
		}, want: ErrBackingFile, wantMsg: "/etc/passwd"},
		{name: "backing format extension", mutate: withExtensions([]extension{{extBackingFormat, []byte("raw")}}), want: ErrBackingFile, wantMsg: `"raw"`},
		{name: "backing format extension after others", mutate: withExtensions([]extension{{extFeatureTable, make([]byte, 48)}, {extBackingFormat, []byte("qcow2")}}), want: ErrBackingFile},
		{name: "external data file bit", mutate: set64(offIncompatible, 1<<2), want: ErrDataFile},
		{name: "external data file extension", mutate: withExtensions([]extension{{extDataFile, []byte("/dev/sda")}}), want: ErrDataFile, wantMsg: "/dev/sda"},
		{name: "crypt_method AES", mutate: set32(offCryptMethod, 1), want: ErrUnsupported, wantMsg: "encrypted"},
		{name: "crypt_method LUKS", mutate: set32(offCryptMethod, 2), want: ErrUnsupported, wantMsg: "encrypted"},
		{name: "encryption extension", mutate: withExtensions([]extension{{extEncryption, make([]byte, 16)}}), want: ErrUnsupported, wantMsg: "encryption"},
		{name: "corrupt bit", mutate: set64(offIncompatible, 1<<1), want: ErrCorrupt, wantMsg: "marked corrupt"},
		{name: "unknown incompatible bit 5", mutate: set64(offIncompatible, 1<<5), want: ErrUnsupported, wantMsg: "0x20"},
		{name: "unknown incompatible bit 63", mutate: set64(offIncompatible, 1<<63), want: ErrUnsupported},
		{name: "compression bit with zlib", mutate: set64(offIncompatible, 1<<3), want: ErrCorrupt},
		{name: "zstd without the compression bit", mutate: func(_ testing.TB, img []byte) []byte {
			img[offCompressionType] = 1
			return img
		}, want: ErrCorrupt},
		{name: "unknown compression type", mutate: func(_ testing.TB, img []byte) []byte {
			put64(img, offIncompatible, 1<<3)
			img[offCompressionType] = 2
			return img
		}, want: ErrUnsupported},
		{name: "extended L2 with 8 KiB clusters", mutate: func(t testing.TB, _ []byte) []byte {
			img, _ := testImage{clusterBits: 13, virtualSize: 1 << 20, extendedL2: true}.build(t)
			return img
		}, want: ErrCorrupt},
		{name: "virtual size over the maximum", max: 1<<20 - 1, want: ErrTooLarge, wantMsg: "limit"},
		{name: "virtual size over 2^63", mutate: set64(offSize, 1<<63), want: ErrTooLarge},
		{name: "virtual size 2^64-1", mutate: set64(offSize, math.MaxUint64), want: ErrTooLarge},
		{name: "extension runs past the first cluster", mutate: func(_ testing.TB, img []byte) []byte {
			put32(img, 112, 0x12345678)
			put32(img, 116, cs)
			return img
		}, want: ErrCorrupt, wantMsg: "first cluster"},
		{name: "extension length 2^32-1", mutate: func(_ testing.TB, img []byte) []byte {
			put32(img, 112, extFeatureTable)
			put32(img, 116, math.MaxUint32)
			return img
		}, want: ErrCorrupt},
		{name: "extensions without end marker run past head", mutate: func(t testing.TB, _ []byte) []byte {
			// A standard image with 2 MiB clusters instead.
			ti := standardImage()
			ti.clusterBits = 21
			img, _ := ti.build(t)
			for off := 112; off+8 <= HeadSize; off += 8 {
				put32(img, off, 0x12345678) // empty unknown extensions
			}
			return img
		}, want: ErrCorrupt, wantMsg: "end marker"},
		{name: "extension data runs past head", mutate: func(t testing.TB, _ []byte) []byte {
			// A standard image with 2 MiB clusters instead.
			ti := standardImage()
			ti.clusterBits = 21
			img, _ := ti.build(t)
			put32(img, 112, 0x12345678)
			put32(img, 116, HeadSize)
			return img
		}, want: ErrCorrupt},
		{name: "file shorter than the head given", fileSize: 100, want: ErrCorrupt},
	}
}

func TestInspectRejects(t *testing.T) {
	for _, tt := range rejectCases() {
		t.Run(tt.name, func(t *testing.T) {
			img, _ := standardImage().build(t)
			if tt.mutate != nil {
				img = tt.mutate(t, img)
			}
			size := tt.fileSize
			if size == 0 {
				size = int64(len(img))
			}
			info, err := Inspect(img[:min(len(img), HeadSize)], size, tt.max)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Inspect = %+v, %v; want %v", info, err, tt.want)
			}
			if info != nil {
				t.Errorf("Inspect returned %+v with its error", info)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not mention %q", err, tt.wantMsg)
			}
			for _, other := range sentinels {
				if other != tt.want && errors.Is(err, other) {
					t.Errorf("error %q also wraps %v", err, other)
				}
			}
			// Open refuses it the same way, before the library sees it.
			if _, _, err := Open(bytes.NewReader(img), int64(len(img)), tt.max); tt.fileSize == 0 && !errors.Is(err, tt.want) {
				t.Errorf("Open: %v; want %v", err, tt.want)
			}
		})
	}
}

// TestInspectTruncated cuts a valid header at every length: each must be
// refused, none may panic.
func TestInspectTruncated(t *testing.T) {
	for _, ti := range []testImage{standardImage(), {version: 2, virtualSize: 1 << 20}} {
		img, lay := ti.build(t)
		for n := 0; n < int(lay.headerExtOffset)+8; n++ {
			for _, size := range []int64{int64(n), -1} {
				info, err := Inspect(img[:n], size, 0)
				if err == nil || info != nil {
					t.Fatalf("v%d cut to %d bytes (fileSize %d): Inspect = %+v, %v; want an error", ti.version, n, size, info, err)
				}
				if !isClassified(err) {
					t.Errorf("v%d cut to %d bytes: unclassified error %v", ti.version, n, err)
				}
				if n > 4 && n < 72 && !errors.Is(err, ErrCorrupt) {
					t.Errorf("v%d cut to %d bytes: %v; want ErrCorrupt", ti.version, n, err)
				}
			}
		}
	}
}

func TestInspectRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 2000; i++ {
		b := make([]byte, r.IntN(4096))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		if i%2 == 1 && len(b) >= 8 {
			copy(b, "QFI\xfb\x00\x00\x00\x03")
		}
		if _, err := Inspect(b, int64(len(b)), 0); err == nil {
			t.Errorf("random bytes %x accepted", b)
		} else if !isClassified(err) {
			t.Errorf("unclassified error %v", err)
		}
	}
}

// TestInspectHugeL1 is the header that made go-qcow2reader die of a fatal
// out-of-memory error: it must be refused at once and without allocating
// by its size.
func TestInspectHugeL1(t *testing.T) {
	img, _ := standardImage().build(t)
	put32(img, offL1Size, 0xFFFFFFF0)
	put64(img, offSize, 0xFFFFFFF0<<29) // big enough to need the L1 table
	allocs := testing.AllocsPerRun(10, func() {
		if _, err := Inspect(img[:HeadSize], int64(len(img)), 0); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Inspect: %v; want ErrCorrupt", err)
		}
	})
	if allocs > 20 {
		t.Errorf("Inspect made %v allocations", allocs)
	}
	var before, after runtimeMem
	before.read()
	_, _, err := Open(bytes.NewReader(img), int64(len(img)), 0)
	after.read()
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open: %v; want ErrCorrupt", err)
	}
	if grew := after.totalAlloc - before.totalAlloc; grew > 1<<20 {
		t.Errorf("Open allocated %d bytes", grew)
	}
}
