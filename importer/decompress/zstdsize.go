package decompress

import (
	"encoding/binary"
	"math"
)

// zstdMagic starts a zstd frame; skippable frames start with
// 0x184D2A50..0x184D2A5F.
const zstdMagic = 0xfd2fb528

// ZstdHeadSize is the most bytes ZstdSize needs: a frame header with a
// window descriptor, a 4-byte dictionary ID and an 8-byte content size.
const ZstdHeadSize = 4 + 1 + 1 + 4 + 8

// ZstdSize returns the Frame_Content_Size of the zstd frame that head,
// the first bytes of a .zst file, starts with, and whether the header
// records it. It needs at most ZstdHeadSize bytes.
//
// The size is that of the FIRST frame only. A file of several frames
// (pzstd writes one per chunk; cat joins files) decompresses to more, and
// nothing at the start of the file tells: the caller must check, as it
// streams, that the content has exactly the size it announced. ok is
// false when head does not start with a zstd frame (a skippable frame
// included: the first real frame would not be the only one), when the
// header does not record the size (the zstd tool omits it when it
// compresses from a pipe) or is malformed, or when the size exceeds an
// int64.
func ZstdSize(head []byte) (size int64, ok bool) {
	if len(head) < 5 || binary.LittleEndian.Uint32(head) != zstdMagic {
		return 0, false
	}
	fhd := head[4]
	if fhd&0x08 != 0 { // reserved bit
		return 0, false
	}
	single := fhd&0x20 != 0
	pos := 5
	if !single {
		pos++ // Window_Descriptor
	}
	pos += [4]int{0, 1, 2, 4}[fhd&3] // Dictionary_ID
	fcsLen := [4]int{0, 2, 4, 8}[fhd>>6]
	if fcsLen == 0 && single {
		fcsLen = 1
	}
	if fcsLen == 0 || len(head) < pos+fcsLen {
		return 0, false
	}
	b := head[pos : pos+fcsLen]
	var v uint64
	switch fcsLen {
	case 1:
		v = uint64(b[0])
	case 2:
		v = uint64(binary.LittleEndian.Uint16(b)) + 256
	case 4:
		v = uint64(binary.LittleEndian.Uint32(b))
	case 8:
		v = binary.LittleEndian.Uint64(b)
	}
	if v > math.MaxInt64 {
		return 0, false
	}
	return int64(v), true
}
