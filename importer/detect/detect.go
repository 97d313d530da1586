// Package detect recognises disk image formats and compression containers
// from the first bytes of a stream. It looks at content only, never at file
// names, and never fails: unknown content is raw.
package detect

import "bytes"

// Format is a disk image format.
type Format string

// Disk formats recognised by Format.
const (
	Raw   Format = "raw"
	QCOW2 Format = "qcow2"
	ISO   Format = "iso"
	VMDK  Format = "vmdk"
	VHD   Format = "vhd"
	VHDX  Format = "vhdx"
	VDI   Format = "vdi"
)

// Compression is a compression container around a disk image.
type Compression string

// Compressions recognised by Compression.
const (
	None  Compression = "none"
	Gzip  Compression = "gzip"
	XZ    Compression = "xz"
	Zstd  Compression = "zstd"
	Bzip2 Compression = "bzip2"
)

// HeadSize is how many leading bytes FormatOf needs to tell every format
// apart: the ISO 9660 signature sits at offset 0x8001.
const HeadSize = isoOffset + len("CD001")

const isoOffset = 0x8001

var (
	qcow2Magic = []byte("QFI\xfb")
	isoMagic   = []byte("CD001")
	vmdkMagic  = []byte("KDMV")
	vmdkDesc   = []byte("# Disk DescriptorFile")
	vhdxMagic  = []byte("vhdxfile")
	vhdMagic   = []byte("conectix")
	vdiMagic   = []byte{0x7f, 0x10, 0xda, 0xbe} // little-endian 0xbeda107f at offset 64

	gzipMagic  = []byte{0x1f, 0x8b}
	xzMagic    = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
	zstdMagic  = []byte{0x28, 0xb5, 0x2f, 0xfd}
	bzip2Magic = []byte("BZh")
)

// FormatOf returns the disk format of an image whose first bytes are head.
// head may be shorter than HeadSize when the image is: formats whose
// signature lies past the end of head are not recognised. A VHD
// (fixed-size) has its footer at the end of the file, so only dynamic VHDs,
// which copy the footer to offset 0, are recognised here.
func FormatOf(head []byte) Format {
	switch {
	case bytes.HasPrefix(head, qcow2Magic):
		return QCOW2
	case bytes.HasPrefix(head, vmdkMagic), bytes.HasPrefix(head, vmdkDesc):
		return VMDK
	case bytes.HasPrefix(head, vhdxMagic):
		return VHDX
	case bytes.HasPrefix(head, vhdMagic):
		return VHD
	case len(head) >= 68 && bytes.Equal(head[64:68], vdiMagic):
		return VDI
	case len(head) >= HeadSize && bytes.Equal(head[isoOffset:HeadSize], isoMagic):
		return ISO
	}
	return Raw
}

// CompressionOf returns the compression container of a stream whose first
// bytes are head.
func CompressionOf(head []byte) Compression {
	switch {
	case bytes.HasPrefix(head, gzipMagic):
		return Gzip
	case bytes.HasPrefix(head, xzMagic):
		return XZ
	case bytes.HasPrefix(head, zstdMagic):
		return Zstd
	case len(head) >= 4 && bytes.HasPrefix(head, bzip2Magic) && head[3] >= '1' && head[3] <= '9':
		return Bzip2
	}
	return None
}
