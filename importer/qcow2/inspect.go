// Package qcow2 validates qcow2 disk images from untrusted sources and reads
// the guest-visible disk out of those that pass.
//
// github.com/lima-vm/go-qcow2reader is written for trusted local images: it
// opens the backing file a header names on the host, and it allocates tables
// straight from header fields (an l1_size of 0xFFFFFFF0 ends the process with
// a fatal out-of-memory error that recover cannot catch). So Inspect checks
// the header itself, against qemu's own limits and against the file's
// length, and Open hands an image to the library only after Inspect has
// accepted it, through a reader that pins the validated header bytes.
//
// Inspect never panics and never allocates according to a size read from
// the image.
package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	libqcow2 "github.com/lima-vm/go-qcow2reader/image/qcow2"
)

// Errors returned by Inspect and Open, wrapped with what was found and what
// the user can do about it. Test them with errors.Is.
var (
	// ErrNotQCOW2: the image does not start with the qcow2 magic.
	ErrNotQCOW2 = errors.New("not a qcow2 image")
	// ErrCorrupt: the header is truncated or inconsistent with itself or
	// with the file, the image is marked corrupt, or a table it points to
	// lies outside the file.
	ErrCorrupt = errors.New("corrupt qcow2 image")
	// ErrUnsupported: a qcow2 version other than 2 and 3, an incompatible
	// feature this package does not know, encryption, or a compression type
	// the reader has no decompressor for.
	ErrUnsupported = errors.New("unsupported qcow2 image")
	// ErrBackingFile: the image names a backing file or a backing file
	// format. Reading it would read a file of the host.
	ErrBackingFile = errors.New("qcow2 image with a backing file")
	// ErrDataFile: the image keeps its data in an external data file.
	// Reading it would read a file of the host.
	ErrDataFile = errors.New("qcow2 image with an external data file")
	// ErrTooLarge: the virtual size is over the caller's maximum, or over
	// what any reader can address.
	ErrTooLarge = errors.New("qcow2 virtual size too large")
)

// HeadSize is how many leading bytes of an image callers should give to
// Inspect: the header and its extensions must lie within them.
const HeadSize = 64 << 10

// Info describes an image that Inspect accepted.
type Info struct {
	// Version is the qcow2 version: 2 or 3.
	Version uint32
	// VirtualSize is the size of the guest-visible disk in bytes.
	VirtualSize uint64
	// ClusterBits is log2 of ClusterSize: 9 to 21.
	ClusterBits uint32
	// ClusterSize is the unit of allocation in bytes: 512 B to 2 MiB.
	ClusterSize int64
	// CompressionType names the compression of compressed clusters:
	// "zlib" (raw deflate) or "zstd".
	CompressionType string
	// L1Size is the number of entries of the active L1 table.
	L1Size uint32
	// RefcountOrder is log2 of the width in bits of a refcount entry
	// (4 for version 2 images).
	RefcountOrder uint32
	// HeaderLength is the length of the header in bytes (72 for version 2
	// images), where the header extensions start.
	HeaderLength uint32
}

// Limits of qemu (block/qcow2.h), which this package enforces as well.
const (
	minClusterBits       = 9
	maxClusterBits       = 21
	minExtL2ClusterBits  = 14       // 32 subclusters of at least 512 bytes
	maxL1Bytes           = 32 << 20 // QCOW_MAX_L1_SIZE
	maxRefcountTableSize = 8 << 20  // QCOW_MAX_REFTABLE_SIZE
	maxSnapshots         = 65536    // QCOW_MAX_SNAPSHOTS
	snapshotHeaderSize   = 40       // fixed part of a snapshot table entry
	maxRefcountOrder     = 6
	maxBackingNameShown  = 256
)

// Header layout (QEMU docs/interop/qcow2.txt): the version 2 fields end at
// 72, the version 3 fields at 104, the compression type byte is at 104.
const (
	v2HeaderLength        = 72
	v3MinHeaderLength     = 104
	compressionTypeOffset = 104
)

// Incompatible features this package can read; any other bit is refused.
const knownIncompatible = 1<<libqcow2.IncompatibleFeaturesDirtyBit |
	1<<libqcow2.IncompatibleFeaturesCorruptBit |
	1<<libqcow2.IncompatibleFeaturesExternalDataFileBit |
	1<<libqcow2.IncompatibleFeaturesCompressionTypeBit |
	1<<libqcow2.IncompatibleFeaturesExtendedL2EntriesBit

// header holds the fields of a qcow2 header, version 2 ones filled in with
// the values version 3 implies.
type header struct {
	version               uint32
	backingFileOffset     uint64
	backingFileSize       uint32
	clusterBits           uint32
	size                  uint64
	cryptMethod           uint32
	l1Size                uint32
	l1TableOffset         uint64
	refcountTableOffset   uint64
	refcountTableClusters uint32
	nbSnapshots           uint32
	snapshotsOffset       uint64
	incompatible          uint64
	refcountOrder         uint32
	headerLength          uint32
	compressionType       uint8
}

func (h *header) clusterSize() uint64 { return 1 << h.clusterBits }

func (h *header) hasIncompatible(bit uint) bool { return h.incompatible&(1<<bit) != 0 }

// Inspect validates the header of a qcow2 image and returns what it says.
//
// head holds the first bytes of the image: HeadSize of them, or the whole
// image when it is shorter. fileSize is the image's length in bytes, or -1
// when it is not known (a stream); when it is known, Inspect also checks
// that the tables the header points to lie inside the file. maxVirtualSize
// is the largest virtual size to accept; 0 means no limit beyond what qemu
// accepts.
//
// The error wraps ErrNotQCOW2, ErrCorrupt, ErrUnsupported, ErrBackingFile,
// ErrDataFile or ErrTooLarge. An image Inspect accepts has no backing file,
// no external data file and no encryption, so that reading it reads only
// the image's own bytes.
func Inspect(head []byte, fileSize int64, maxVirtualSize uint64) (*Info, error) {
	if fileSize >= 0 && int64(len(head)) > fileSize {
		return nil, fmt.Errorf("%w: %d leading bytes were given of an image of only %d bytes", ErrCorrupt, len(head), fileSize)
	}
	h, err := parseHeader(head)
	if err != nil {
		return nil, err
	}
	// In this order: each check relies on the ones before it.
	checks := []func() error{
		func() error { return checkBackingFile(h, head) },
		h.checkFeatures,
		func() error { return h.checkLayout(head) },
		func() error { return h.checkSize(maxVirtualSize) },
		func() error { return h.checkTables(fileSize) },
		func() error { return checkExtensions(h, head) },
	}
	for _, check := range checks {
		if err := check(); err != nil {
			return nil, err
		}
	}
	return h.info(), nil
}

func (h *header) info() *Info {
	compression := "zlib"
	if h.compressionType == 1 {
		compression = "zstd"
	}
	return &Info{
		Version:         h.version,
		VirtualSize:     h.size,
		ClusterBits:     h.clusterBits,
		ClusterSize:     int64(h.clusterSize()),
		CompressionType: compression,
		L1Size:          h.l1Size,
		RefcountOrder:   h.refcountOrder,
		HeaderLength:    h.headerLength,
	}
}

// parseHeader reads the header fields, checking only that they are there.
func parseHeader(head []byte) (*header, error) {
	magic := []byte(libqcow2.Magic)
	if len(head) < len(magic) {
		if len(head) > 0 && bytes.HasPrefix(magic, head) {
			return nil, fmt.Errorf("%w: the image ends after %d bytes, inside the qcow2 magic", ErrCorrupt, len(head))
		}
		return nil, fmt.Errorf("%w: the image is only %d bytes long", ErrNotQCOW2, len(head))
	}
	if !bytes.Equal(head[:len(magic)], magic) {
		return nil, fmt.Errorf("%w: it does not start with the qcow2 magic %q", ErrNotQCOW2, libqcow2.Magic)
	}
	if len(head) < 8 {
		return nil, truncated(head, 8)
	}
	be := binary.BigEndian
	h := &header{version: be.Uint32(head[4:])}
	switch h.version {
	case 2:
		h.headerLength = v2HeaderLength
		h.refcountOrder = 4
	case 3:
		h.headerLength = v3MinHeaderLength
	case 1:
		return nil, fmt.Errorf("%w: it is a version 1 qcow image, which qemu calls format \"qcow\"; convert it with qemu-img convert -f qcow -O qcow2 in.qcow out.qcow2", ErrUnsupported)
	default:
		return nil, fmt.Errorf("%w: qcow2 version %d; this reader knows versions 2 and 3 (convert it with qemu-img convert -O qcow2 -o compat=1.1 in.qcow2 out.qcow2)", ErrUnsupported, h.version)
	}
	if len(head) < int(h.headerLength) {
		return nil, truncated(head, int(h.headerLength))
	}
	h.backingFileOffset = be.Uint64(head[8:])
	h.backingFileSize = be.Uint32(head[16:])
	h.clusterBits = be.Uint32(head[20:])
	h.size = be.Uint64(head[24:])
	h.cryptMethod = be.Uint32(head[32:])
	h.l1Size = be.Uint32(head[36:])
	h.l1TableOffset = be.Uint64(head[40:])
	h.refcountTableOffset = be.Uint64(head[48:])
	h.refcountTableClusters = be.Uint32(head[56:])
	h.nbSnapshots = be.Uint32(head[60:])
	h.snapshotsOffset = be.Uint64(head[64:])
	if h.version == 2 {
		return h, nil
	}
	h.incompatible = be.Uint64(head[72:])
	// compatible (80) and autoclear (88) features are safe to ignore.
	h.refcountOrder = be.Uint32(head[96:])
	h.headerLength = be.Uint32(head[100:])
	return h, nil
}

func truncated(head []byte, need int) error {
	return fmt.Errorf("%w: the header is truncated: the image holds %d bytes, the header needs %d", ErrCorrupt, len(head), need)
}

// checkBackingFile refuses a backing file, naming it when its name lies
// within head.
func checkBackingFile(h *header, head []byte) error {
	if h.backingFileOffset == 0 && h.backingFileSize == 0 {
		return nil
	}
	const hint = "refusing it, since it would make the consumer read a file of the host; flatten the image first (qemu-img convert -O qcow2 in.qcow2 out.qcow2)"
	if h.backingFileOffset != 0 && h.backingFileOffset < uint64(len(head)) && h.backingFileSize > 0 {
		name := head[h.backingFileOffset:]
		name = name[:min(len(name), int(min(h.backingFileSize, maxBackingNameShown)))]
		return fmt.Errorf("%w: it names the backing file %q: %s", ErrBackingFile, name, hint)
	}
	return fmt.Errorf("%w: it names a backing file (%d bytes at offset %d): %s", ErrBackingFile, h.backingFileSize, h.backingFileOffset, hint)
}

// checkFeatures refuses encryption, an external data file, a corrupt mark
// and features this reader does not know.
func (h *header) checkFeatures() error {
	if h.cryptMethod != uint32(libqcow2.CryptMethodNone) {
		return fmt.Errorf("%w: it is encrypted (crypt_method %d, %s); decrypt it first with qemu-img convert -O qcow2, giving the key with --object secret", ErrUnsupported, h.cryptMethod, libqcow2.CryptMethod(h.cryptMethod))
	}
	if h.hasIncompatible(libqcow2.IncompatibleFeaturesExternalDataFileBit) {
		return fmt.Errorf("%w: its guest data lives in an external data file; refusing it, since it would make the consumer read a file of the host; merge the data into the image first (qemu-img convert -O qcow2 in.qcow2 out.qcow2)", ErrDataFile)
	}
	if h.hasIncompatible(libqcow2.IncompatibleFeaturesCorruptBit) {
		return fmt.Errorf("%w: the image is marked corrupt (incompatible feature bit 1), so qemu would not trust its metadata either; repair it with qemu-img check -r all, or copy out what is readable with qemu-img convert -O qcow2", ErrCorrupt)
	}
	if unknown := h.incompatible &^ knownIncompatible; unknown != 0 {
		return fmt.Errorf("%w: it uses incompatible features unknown to this reader (bits %#x); rewrite it with qemu-img convert -O qcow2 -o compat=1.1 in.qcow2 out.qcow2", ErrUnsupported, unknown)
	}
	return nil
}

// checkLayout checks the cluster size, the refcount width, the header
// length and the compression type.
func (h *header) checkLayout(head []byte) error {
	if h.clusterBits < minClusterBits || h.clusterBits > maxClusterBits {
		return fmt.Errorf("%w: cluster_bits is %d; qemu allows %d to %d (512 B to 2 MiB clusters)", ErrCorrupt, h.clusterBits, minClusterBits, maxClusterBits)
	}
	if h.hasIncompatible(libqcow2.IncompatibleFeaturesExtendedL2EntriesBit) && h.clusterBits < minExtL2ClusterBits {
		return fmt.Errorf("%w: extended L2 entries need clusters of at least 16 KiB, the image has %d-byte clusters", ErrCorrupt, h.clusterSize())
	}
	if h.refcountOrder > maxRefcountOrder {
		return fmt.Errorf("%w: refcount_order %d makes refcounts wider than 64 bits", ErrCorrupt, h.refcountOrder)
	}
	if h.version == 2 {
		return nil
	}
	switch {
	case h.headerLength < v3MinHeaderLength:
		return fmt.Errorf("%w: header_length %d is shorter than the %d bytes of a version 3 header", ErrCorrupt, h.headerLength, v3MinHeaderLength)
	case h.headerLength%8 != 0:
		return fmt.Errorf("%w: header_length %d is not a multiple of 8", ErrCorrupt, h.headerLength)
	case uint64(h.headerLength) > h.clusterSize():
		return fmt.Errorf("%w: header_length %d exceeds the %d-byte cluster", ErrCorrupt, h.headerLength, h.clusterSize())
	case uint64(h.headerLength) > uint64(len(head)):
		return truncated(head, int(h.headerLength))
	}
	if h.headerLength > compressionTypeOffset {
		h.compressionType = head[compressionTypeOffset]
	}
	return h.checkCompression()
}

// checkCompression checks the compression type against incompatible
// feature bit 3, as qemu does: the bit is set exactly when the type is not
// zlib.
func (h *header) checkCompression() error {
	bit := h.hasIncompatible(libqcow2.IncompatibleFeaturesCompressionTypeBit)
	switch t := libqcow2.CompressionType(h.compressionType); {
	case t != libqcow2.CompressionTypeZlib && t != libqcow2.CompressionTypeZstd:
		return fmt.Errorf("%w: unknown compression type %d; rewrite it with qemu-img convert -O qcow2 in.qcow2 out.qcow2", ErrUnsupported, h.compressionType)
	case t == libqcow2.CompressionTypeZlib && bit:
		return fmt.Errorf("%w: the compression type incompatible feature bit is set with zlib compression", ErrCorrupt)
	case t != libqcow2.CompressionTypeZlib && !bit:
		return fmt.Errorf("%w: compression type %s without the compression type incompatible feature bit", ErrCorrupt, t)
	}
	return nil
}

// checkSize checks the virtual size against the caller's limit and the L1
// table size against the virtual size and qemu's bound. It relies on
// checkLayout for a cluster size of 512 B to 2 MiB, as do checkTables and
// checkExtensions.
func (h *header) checkSize(maxVirtualSize uint64) error {
	if maxVirtualSize > 0 && h.size > maxVirtualSize {
		return fmt.Errorf("%w: its virtual size is %d bytes, over the limit of %d bytes; raise the limit (--max-virtual-size) if the disk is expected to be this large", ErrTooLarge, h.size, maxVirtualSize)
	}
	if h.size > math.MaxInt64 {
		return fmt.Errorf("%w: its virtual size is %d bytes, over the %d bytes a reader can address", ErrTooLarge, h.size, int64(math.MaxInt64))
	}
	if uint64(h.l1Size) > maxL1Bytes/8 {
		return fmt.Errorf("%w: l1_size %d is over qemu's limit of %d entries", ErrCorrupt, h.l1Size, maxL1Bytes/8)
	}
	l2Bits := h.clusterBits - 3 // 8-byte L2 entries
	if h.hasIncompatible(libqcow2.IncompatibleFeaturesExtendedL2EntriesBit) {
		l2Bits = h.clusterBits - 4 // 16-byte extended L2 entries
	}
	shift := h.clusterBits + l2Bits // bytes of guest disk one L1 entry maps: at most 2^39
	needed := h.size >> shift
	if h.size&(1<<shift-1) != 0 {
		needed++
	}
	if needed > uint64(h.l1Size) {
		return fmt.Errorf("%w: l1_size %d is too small for a virtual size of %d bytes with %d-byte clusters (it needs at least %d)", ErrCorrupt, h.l1Size, h.size, h.clusterSize(), needed)
	}
	return nil
}

// checkTables checks that the L1 table, the refcount table and the snapshot
// table are cluster-aligned and, when fileSize is known, inside the file.
func (h *header) checkTables(fileSize int64) error {
	if h.l1Size > 0 && h.l1TableOffset == 0 {
		return fmt.Errorf("%w: the L1 table is at offset 0, over the header", ErrCorrupt)
	}
	if err := h.checkTable("L1 table", h.l1TableOffset, uint64(h.l1Size)*8, fileSize); err != nil {
		return err
	}
	if h.refcountTableClusters == 0 {
		return fmt.Errorf("%w: the image has no refcount table (refcount_table_clusters is 0)", ErrCorrupt)
	}
	if uint64(h.refcountTableClusters) > maxRefcountTableSize>>h.clusterBits {
		return fmt.Errorf("%w: refcount_table_clusters %d is over qemu's limit of %d bytes", ErrCorrupt, h.refcountTableClusters, maxRefcountTableSize)
	}
	if h.refcountTableOffset == 0 {
		return fmt.Errorf("%w: the refcount table is at offset 0, over the header", ErrCorrupt)
	}
	if err := h.checkTable("refcount table", h.refcountTableOffset, uint64(h.refcountTableClusters)<<h.clusterBits, fileSize); err != nil {
		return err
	}
	if h.nbSnapshots > maxSnapshots {
		return fmt.Errorf("%w: nb_snapshots %d is over qemu's limit of %d", ErrCorrupt, h.nbSnapshots, maxSnapshots)
	}
	return h.checkTable("snapshot table", h.snapshotsOffset, uint64(h.nbSnapshots)*snapshotHeaderSize, fileSize)
}

// checkTable checks one table of n bytes at offset off. n is at most a few
// tens of MiB, so off+n overflows only if off is absurd, which is checked
// first.
func (h *header) checkTable(name string, off, n uint64, fileSize int64) error {
	if off&(h.clusterSize()-1) != 0 {
		return fmt.Errorf("%w: the %s offset %#x is not aligned to the %d-byte cluster size", ErrCorrupt, name, off, h.clusterSize())
	}
	if off > math.MaxInt64-n {
		return fmt.Errorf("%w: the %s offset %#x is beyond any file", ErrCorrupt, name, off)
	}
	if fileSize >= 0 && n > 0 && off+n > uint64(fileSize) {
		return fmt.Errorf("%w: the %s (%d bytes at offset %d) ends past the end of the %d-byte file; the image is truncated or corrupt", ErrCorrupt, name, n, off, fileSize)
	}
	return nil
}
