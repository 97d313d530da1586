package qcow2test_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/diskimporter/diskimporter/importer/qcow2"
	"github.com/diskimporter/diskimporter/importer/qcow2/qcow2test"
)

// guest returns a disk of n bytes in 4 KiB blocks that are, in turn,
// incompressible, zero and text.
func guest(n int) []byte {
	g := make([]byte, n)
	for off := 0; off < n; off += 4 << 10 {
		b := g[off:min(n, off+4<<10)]
		switch off / (4 << 10) % 3 {
		case 0:
			copy(b, qcow2test.Pattern(byte(off>>12), len(b)))
		case 2:
			copy(b, qcow2test.Text(len(b)))
		}
	}
	return g
}

func TestImageReadsAsGuest(t *testing.T) {
	tests := []struct {
		name    string
		guest   []byte
		opts    []qcow2test.Option
		want    qcow2.Info
		maxSize int // of the image file; 0: no check
	}{
		{name: "default", guest: guest(1 << 20),
			want: qcow2.Info{Version: 3, VirtualSize: 1 << 20, ClusterBits: 16, ClusterSize: 64 << 10, CompressionType: "zlib", L1Size: 1, RefcountOrder: 4, HeaderLength: 112}},
		{name: "v2", guest: guest(1 << 20), opts: []qcow2test.Option{qcow2test.V2()},
			want: qcow2.Info{Version: 2, VirtualSize: 1 << 20, ClusterBits: 16, ClusterSize: 64 << 10, CompressionType: "zlib", L1Size: 1, RefcountOrder: 4, HeaderLength: 72}},
		{name: "4 KiB clusters, zeros unallocated", guest: guest(1 << 20), opts: []qcow2test.Option{qcow2test.ClusterBits(12)},
			want:    qcow2.Info{Version: 3, VirtualSize: 1 << 20, ClusterBits: 12, ClusterSize: 4 << 10, CompressionType: "zlib", L1Size: 1, RefcountOrder: 4, HeaderLength: 112},
			maxSize: (1<<20)*2/3 + 32<<10},
		{name: "compressed and zero clusters", guest: guest(256 << 10), opts: []qcow2test.Option{qcow2test.ClusterBits(12), qcow2test.Compressed(), qcow2test.ZeroClusters()},
			want: qcow2.Info{Version: 3, VirtualSize: 256 << 10, ClusterBits: 12, ClusterSize: 4 << 10, CompressionType: "zlib", L1Size: 1, RefcountOrder: 4, HeaderLength: 112}},
		{name: "512 B clusters over several L2 tables and refcount blocks", guest: guest(256 << 10), opts: []qcow2test.Option{qcow2test.ClusterBits(9)},
			want: qcow2.Info{Version: 3, VirtualSize: 256 << 10, ClusterBits: 9, ClusterSize: 512, CompressionType: "zlib", L1Size: 8, RefcountOrder: 4, HeaderLength: 112}},
		{name: "512 B clusters compressed", guest: guest(64 << 10), opts: []qcow2test.Option{qcow2test.ClusterBits(9), qcow2test.Compressed()},
			want: qcow2.Info{Version: 3, VirtualSize: 64 << 10, ClusterBits: 9, ClusterSize: 512, CompressionType: "zlib", L1Size: 2, RefcountOrder: 4, HeaderLength: 112}},
		{name: "size not a multiple of the cluster", guest: guest(100<<10 + 7),
			want: qcow2.Info{Version: 3, VirtualSize: 100<<10 + 7, ClusterBits: 16, ClusterSize: 64 << 10, CompressionType: "zlib", L1Size: 1, RefcountOrder: 4, HeaderLength: 112}},
		{name: "larger virtual size", guest: guest(64 << 10), opts: []qcow2test.Option{qcow2test.WithVirtualSize(3 << 20)},
			want: qcow2.Info{Version: 3, VirtualSize: 3 << 20, ClusterBits: 16, ClusterSize: 64 << 10, CompressionType: "zlib", L1Size: 1, RefcountOrder: 4, HeaderLength: 112}},
		{name: "harmless extension", guest: guest(64 << 10), opts: []qcow2test.Option{qcow2test.WithExtension(qcow2test.ExtFeatureTable, make([]byte, 48))},
			want: qcow2.Info{Version: 3, VirtualSize: 64 << 10, ClusterBits: 16, ClusterSize: 64 << 10, CompressionType: "zlib", L1Size: 1, RefcountOrder: 4, HeaderLength: 112}},
		{name: "empty", guest: nil,
			want: qcow2.Info{Version: 3, ClusterBits: 16, ClusterSize: 64 << 10, CompressionType: "zlib", RefcountOrder: 4, HeaderLength: 112}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, err := qcow2test.Image(tt.guest, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			if tt.maxSize > 0 && len(img) > tt.maxSize {
				t.Errorf("image of %d bytes, want at most %d: zero clusters allocated?", len(img), tt.maxSize)
			}
			info, disk, err := qcow2.Open(bytes.NewReader(img), int64(len(img)), 0)
			if err != nil {
				t.Fatal(err)
			}
			if *info != tt.want {
				t.Errorf("Info %+v, want %+v", *info, tt.want)
			}
			got := make([]byte, info.VirtualSize)
			if n, err := disk.ReadAt(got, 0); n != len(got) || (err != nil && err != io.EOF) {
				t.Fatalf("ReadAt(whole disk) = %d, %v", n, err)
			}
			want := make([]byte, info.VirtualSize)
			copy(want, tt.guest)
			if !bytes.Equal(got, want) {
				t.Error("the image does not read as the guest")
			}
			// Deterministic: the same guest gives the same image.
			again, _ := qcow2test.Image(tt.guest, tt.opts...)
			if !bytes.Equal(img, again) {
				t.Error("two builds differ")
			}
		})
	}
}

// TestImageRefcounts checks that every cluster of the file has a refcount
// of 1 and that the refcount structures cover the whole file.
func TestImageRefcounts(t *testing.T) {
	for _, bits := range []uint32{9, 12, 16} {
		g := guest(2 << 20)
		s := qcow2test.Spec{ClusterBits: bits, VirtualSize: uint64(len(g)), Data: map[int64][]byte{}}
		cs := 1 << bits
		for i := 0; i*cs < len(g); i++ {
			s.Data[int64(i)] = g[i*cs : (i+1)*cs]
		}
		img, lay, err := s.Build()
		if err != nil {
			t.Fatal(err)
		}
		be := binary.BigEndian
		clusters := int64(len(img)) / lay.ClusterSize
		perBlock := lay.ClusterSize / 2
		if lay.Refblocks*perBlock < clusters || lay.Refblocks > lay.RefcountClusters*lay.ClusterSize/8 {
			t.Fatalf("bits %d: %d refcount blocks in %d table clusters for %d clusters", bits, lay.Refblocks, lay.RefcountClusters, clusters)
		}
		if got := int64(be.Uint32(img[qcow2test.OffRefcountClusters:])); got != lay.RefcountClusters {
			t.Errorf("bits %d: header refcount_table_clusters %d, layout %d", bits, got, lay.RefcountClusters)
		}
		for c := range clusters {
			block := int64(be.Uint64(img[lay.RefcountOffset+8*(c/perBlock):]))
			if rc := be.Uint16(img[block+2*(c%perBlock):]); rc != 1 {
				t.Fatalf("bits %d: cluster %d has refcount %d", bits, c, rc)
			}
		}
		if bits == 9 && lay.Refblocks < 2 {
			t.Errorf("bits 9: %d refcount blocks; the test means to cover several", lay.Refblocks)
		}
	}
}

func TestHostileImages(t *testing.T) {
	g := guest(256 << 10)
	tests := []struct {
		name string
		opts []qcow2test.Option
		max  uint64
		want error
		msg  string
	}{
		{name: "backing file", opts: []qcow2test.Option{qcow2test.WithBackingFile("/etc/hostname")}, want: qcow2.ErrBackingFile, msg: `"/etc/hostname"`},
		{name: "backing file in a v2 image", opts: []qcow2test.Option{qcow2test.V2(), qcow2test.WithBackingFile("../x")}, want: qcow2.ErrBackingFile, msg: `"../x"`},
		{name: "backing format extension", opts: []qcow2test.Option{qcow2test.WithExtension(qcow2test.ExtBackingFormat, []byte("raw"))}, want: qcow2.ErrBackingFile},
		{name: "data file bit", opts: []qcow2test.Option{qcow2test.WithDataFileBit()}, want: qcow2.ErrDataFile},
		{name: "version 4", opts: []qcow2test.Option{qcow2test.WithVersion(4)}, want: qcow2.ErrUnsupported, msg: "version 4"},
		{name: "version 1", opts: []qcow2test.Option{qcow2test.WithVersion(1)}, want: qcow2.ErrUnsupported},
		{name: "bad magic", opts: []qcow2test.Option{qcow2test.WithMagic("QFI\xfa")}, want: qcow2.ErrNotQCOW2},
		{name: "truncated", opts: []qcow2test.Option{qcow2test.Truncated(100 << 10)}, want: qcow2.ErrCorrupt, msg: "past the end"},
		{name: "1 PiB", opts: []qcow2test.Option{qcow2test.ClusterBits(19), qcow2test.WithVirtualSize(1 << 50)}, max: 1 << 30, want: qcow2.ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, err := qcow2test.Image(g, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			_, err = qcow2.Inspect(img[:min(len(img), qcow2.HeadSize)], int64(len(img)), tt.max)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("Inspect: %v; want %v mentioning %q", err, tt.want, tt.msg)
			}
		})
	}

	// The 1 PiB image is consistent but for its size: with the limit
	// lifted it passes, from a file of 2 MiB.
	img, err := qcow2test.Image(g, qcow2test.ClusterBits(19), qcow2test.WithVirtualSize(1<<50))
	if err != nil {
		t.Fatal(err)
	}
	if len(img) > 3<<20 {
		t.Errorf("1 PiB image is %d bytes", len(img))
	}
	if info, err := qcow2.Inspect(img[:qcow2.HeadSize], int64(len(img)), 0); err != nil || info.VirtualSize != 1<<50 {
		t.Errorf("Inspect without a limit: %+v, %v", info, err)
	}
}

func TestImageErrors(t *testing.T) {
	g := guest(128 << 10)
	for name, opts := range map[string][]qcow2test.Option{
		"virtual size below the guest": {qcow2test.WithVirtualSize(1000)},
		"cluster bits 8":               {qcow2test.ClusterBits(8)},
		"zero clusters in v2":          {qcow2test.V2(), qcow2test.ZeroClusters()},
		"data file bit in v2":          {qcow2test.V2(), qcow2test.WithDataFileBit()},
		"truncated past the end":       {qcow2test.Truncated(1 << 30)},
		"magic of 3 bytes":             {qcow2test.WithMagic("QFI")},
		"backing name past cluster 0":  {qcow2test.ClusterBits(9), qcow2test.WithBackingFile(strings.Repeat("a", 600))},
	} {
		if _, err := qcow2test.Image(g, opts...); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
