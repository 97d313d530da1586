package qcow2

import (
	"encoding/binary"
	"fmt"

	libqcow2 "github.com/lima-vm/go-qcow2reader/image/qcow2"
)

// extensionHeaderSize is the size of a header extension's type and length.
const extensionHeaderSize = 8

// checkExtensions walks the header extensions, which follow the header
// within the first cluster (qemu reads no further, since a backing file,
// refused before, is the only other thing that can end them) and end with
// an extension of type 0. It refuses the ones that make a reader open a
// file of the host or decrypt, and extensions that run past the first
// cluster or past head.
func checkExtensions(h *header, head []byte) error {
	be := binary.BigEndian
	end := h.clusterSize() // at most 2 MiB; every offset below stays small
	off := uint64(h.headerLength)
	for off < end {
		if end-off < extensionHeaderSize {
			return fmt.Errorf("%w: the header extension at offset %d runs past the first cluster", ErrCorrupt, off)
		}
		if off+extensionHeaderSize > uint64(len(head)) {
			return extensionsPastHead(head, off)
		}
		typ := libqcow2.HeaderExtensionType(be.Uint32(head[off:]))
		length := uint64(be.Uint32(head[off+4:]))
		off += extensionHeaderSize
		if length > end-off {
			return fmt.Errorf("%w: header extension %#08x of %d bytes at offset %d runs past the first cluster", ErrCorrupt, uint32(typ), length, off-extensionHeaderSize)
		}
		if err := checkExtension(typ, extensionData(head, off, length)); err != nil {
			return err
		}
		if typ == libqcow2.HeaderExtensionTypeEnd {
			return nil
		}
		off += (length + 7) &^ 7 // data is padded to 8 bytes
		if off > uint64(len(head)) {
			return extensionsPastHead(head, off)
		}
	}
	return nil
}

func extensionsPastHead(head []byte, off uint64) error {
	return fmt.Errorf("%w: the header extensions run past the first %d bytes of the image (to offset %d) without an end marker", ErrCorrupt, len(head), off)
}

// extensionData returns the part of an extension's data that lies within
// head, cut to maxBackingNameShown bytes, for messages.
func extensionData(head []byte, off, length uint64) []byte {
	if off >= uint64(len(head)) {
		return nil
	}
	data := head[off:]
	return data[:min(uint64(len(data)), length, maxBackingNameShown)]
}

// checkExtension refuses the extensions that name a backing file format,
// an external data file or an encryption header.
func checkExtension(typ libqcow2.HeaderExtensionType, data []byte) error {
	switch typ {
	case libqcow2.HeaderExtensionTypeBackingFileFormatNameString:
		return fmt.Errorf("%w: it names a backing file format %q; refusing it, since a backing file would make the consumer read a file of the host; flatten the image first (qemu-img convert -O qcow2 in.qcow2 out.qcow2)", ErrBackingFile, data)
	case libqcow2.HeaderExtensionTypeExternalDataFileNameString:
		return fmt.Errorf("%w: it names the external data file %q; refusing it, since it would make the consumer read a file of the host; merge the data into the image first (qemu-img convert -O qcow2 in.qcow2 out.qcow2)", ErrDataFile, data)
	case libqcow2.HeaderExtensionTypeFullDiskEncryptionHeaderPointer:
		return fmt.Errorf("%w: it carries a full disk encryption header; decrypt it first with qemu-img convert -O qcow2, giving the key with --object secret", ErrUnsupported)
	}
	// The end marker, the feature name table, the bitmaps extension and
	// unknown extensions change nothing about the guest data.
	return nil
}
