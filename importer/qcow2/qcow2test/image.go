package qcow2test

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Image returns a qcow2 image whose guest disk reads as guest: virtual size
// len(guest) (or WithVirtualSize), one host cluster per cluster of guest
// that holds a non-zero byte, and the all-zero clusters unallocated (or
// marked zero, with ZeroClusters). Without options it is a version 3 image
// with 64 KiB clusters, as qemu-img convert -O qcow2 writes one.
//
// The options that shape the layout (V2, ClusterBits, Compressed,
// ZeroClusters, WithVirtualSize, WithExtension) may come in any order. The
// ones that make a hostile image out of a valid one (WithBackingFile,
// WithDataFileBit, WithVersion, WithMagic, Truncated) patch the built image
// in the order they are given.
func Image(guest []byte, opts ...Option) ([]byte, error) {
	b := &builder{spec: Spec{VirtualSize: uint64(len(guest))}}
	for _, o := range opts {
		o(b)
	}
	if b.err != nil {
		return nil, b.err
	}
	s := b.spec.withDefaults()
	if s.VirtualSize < uint64(len(guest)) {
		return nil, fmt.Errorf("qcow2test: virtual size %d is smaller than the %d-byte guest", s.VirtualSize, len(guest))
	}
	if b.zero && s.Version == 2 {
		return nil, fmt.Errorf("qcow2test: version 2 images have no zero clusters")
	}
	cs := 1 << s.ClusterBits
	s.Data, s.Compressed = map[int64][]byte{}, map[int64][]byte{}
	for idx := 0; idx*cs < len(guest); idx++ {
		c := guest[idx*cs : min(len(guest), (idx+1)*cs)]
		switch {
		case allZero(c):
			if b.zero {
				s.Zero = append(s.Zero, int64(idx))
			}
		case b.compressed && compresses(c, cs):
			s.Compressed[int64(idx)] = c
		default:
			s.Data[int64(idx)] = c
		}
	}
	img, lay, err := s.Build()
	if err != nil {
		return nil, err
	}
	for _, p := range b.patches {
		if img, err = p(img, lay, s); err != nil {
			return nil, err
		}
	}
	return img, nil
}

// Option changes the image Image builds.
type Option func(*builder)

type builder struct {
	spec       Spec
	compressed bool
	zero       bool
	patches    []func(img []byte, lay Layout, s Spec) ([]byte, error)
	err        error
}

func (b *builder) patch(p func(img []byte, lay Layout, s Spec) ([]byte, error)) {
	b.patches = append(b.patches, p)
}

// V2 builds a version 2 image (qemu's compat=0.10): a 72-byte header, no
// feature bits, no zero clusters.
func V2() Option { return func(b *builder) { b.spec.Version = 2 } }

// ClusterBits sets the cluster size to 1<<bits bytes, 9 (512 B) to 21
// (2 MiB); the default is 16 (64 KiB).
func ClusterBits(bits uint32) Option { return func(b *builder) { b.spec.ClusterBits = bits } }

// Compressed stores every non-zero cluster that deflate makes smaller
// compressed, and the others as they are, as qemu-img convert -c does.
func Compressed() Option { return func(b *builder) { b.compressed = true } }

// ZeroClusters marks the all-zero clusters of the guest with the zero flag
// of version 3 instead of leaving them unallocated.
func ZeroClusters() Option { return func(b *builder) { b.zero = true } }

// WithExtension adds a header extension (before the end marker). Harmless
// ones (ExtFeatureTable, ExtBitmaps, unknown types) change nothing for a
// reader; ExtBackingFormat, ExtDataFile and ExtEncryption make the image
// one an importer must refuse.
func WithExtension(typ uint32, data []byte) Option {
	return func(b *builder) { b.spec.Extensions = append(b.spec.Extensions, Extension{typ, data}) }
}

// WithVirtualSize makes the image claim a virtual size of n bytes, at
// least the guest's length; the clusters past the guest are unallocated.
// The L1 table is sized for n, as qemu sizes it, so a huge n makes a small
// file that is otherwise consistent: 8 bytes of L1 table per
// 2^(2*bits-3) bytes of virtual size, such as 16 MiB for 1 PiB with 64 KiB
// clusters but 256 KiB, in a 2 MiB file, with ClusterBits(19).
func WithVirtualSize(n uint64) Option { return func(b *builder) { b.spec.VirtualSize = n } }

// WithBackingFile names name as the backing file in the header, written just
// after the header extensions as qemu writes it: an image an importer must
// refuse, since reading it would read a file of the host.
func WithBackingFile(name string) Option {
	return func(b *builder) {
		b.patch(func(img []byte, lay Layout, _ Spec) ([]byte, error) {
			off := (lay.ExtensionsEnd + 7) &^ 7
			if off+int64(len(name)) > min(lay.ClusterSize, int64(len(img))) {
				return nil, fmt.Errorf("qcow2test: backing file name of %d bytes does not fit cluster 0", len(name))
			}
			copy(img[off:], name)
			binary.BigEndian.PutUint64(img[OffBackingOffset:], uint64(off))
			binary.BigEndian.PutUint32(img[OffBackingSize:], uint32(len(name)))
			return img, nil
		})
	}
}

// WithDataFileBit sets the external data file incompatible feature bit of
// a version 3 image: its guest data would live in another file, which an
// importer must refuse.
func WithDataFileBit() Option {
	return func(b *builder) {
		b.patch(func(img []byte, _ Layout, s Spec) ([]byte, error) {
			if s.Version != 3 || len(img) < OffIncompatible+8 {
				return nil, fmt.Errorf("qcow2test: WithDataFileBit needs a version 3 header")
			}
			v := binary.BigEndian.Uint64(img[OffIncompatible:])
			binary.BigEndian.PutUint64(img[OffIncompatible:], v|IncompatibleDataFile)
			return img, nil
		})
	}
}

// WithVersion writes v in the header's version field, leaving the rest of
// the image as built: WithVersion(4) or WithVersion(1) makes an image of a
// version a reader of versions 2 and 3 must refuse. For a real version 2
// image, use V2.
func WithVersion(v uint32) Option {
	return func(b *builder) {
		b.patch(func(img []byte, _ Layout, _ Spec) ([]byte, error) {
			if len(img) < OffVersion+4 {
				return nil, fmt.Errorf("qcow2test: WithVersion on an image of %d bytes", len(img))
			}
			binary.BigEndian.PutUint32(img[OffVersion:], v)
			return img, nil
		})
	}
}

// WithMagic replaces the 4-byte magic "QFI\xfb" with magic: the image is
// then no qcow2 at all to a reader that goes by content.
func WithMagic(magic string) Option {
	return func(b *builder) {
		b.patch(func(img []byte, _ Layout, _ Spec) ([]byte, error) {
			if len(magic) != len(Magic) || len(img) < len(Magic) {
				return nil, fmt.Errorf("qcow2test: WithMagic(%q): want 4 bytes on an image of at least 4", magic)
			}
			copy(img, magic)
			return img, nil
		})
	}
}

// Truncated cuts the image to its first n bytes, as an interrupted
// download would: the tables or clusters past n are then missing.
func Truncated(n int64) Option {
	return func(b *builder) {
		b.patch(func(img []byte, _ Layout, _ Spec) ([]byte, error) {
			if n < 0 || n > int64(len(img)) {
				return nil, fmt.Errorf("qcow2test: Truncated(%d) of an image of %d bytes", n, len(img))
			}
			return img[:n], nil
		})
	}
}

func allZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeros))
		if !bytes.Equal(p[:n], zeros[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

var zeros = make([]byte, 64<<10)

// compresses reports whether the cluster c (padded to cs bytes) deflates
// to less than a cluster.
func compresses(c []byte, cs int) bool {
	full := make([]byte, cs)
	copy(full, c)
	return len(Deflate(full)) < cs
}
