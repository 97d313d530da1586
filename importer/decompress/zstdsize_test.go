package decompress

import (
	"bytes"
	"encoding/binary"
	"math"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// zstdHeader builds a frame header: descriptor fhd, then a window
// descriptor unless single segment, dictionary ID and content size fields
// of the lengths fhd says, filled with the given values.
func zstdHeader(fhd byte, dictID uint32, fcs uint64) []byte {
	b := binary.LittleEndian.AppendUint32(nil, zstdMagic)
	b = append(b, fhd)
	if fhd&0x20 == 0 {
		b = append(b, 0x58) // 8 MiB window
	}
	var dict [4]byte
	binary.LittleEndian.PutUint32(dict[:], dictID)
	b = append(b, dict[:[4]int{0, 1, 2, 4}[fhd&3]]...)
	var size [8]byte
	binary.LittleEndian.PutUint64(size[:], fcs)
	n := [4]int{0, 2, 4, 8}[fhd>>6]
	if n == 0 && fhd&0x20 != 0 {
		n = 1
	}
	return append(b, size[:n]...)
}

func TestZstdSize(t *testing.T) {
	data := disk(t, bigDisk)
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	withSize := func(n int) []byte {
		var buf bytes.Buffer
		enc.ResetContentSize(&buf, int64(n))
		if _, err := enc.Write(data[:n]); err != nil {
			t.Fatal(err)
		}
		if err := enc.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	skippable := binary.LittleEndian.AppendUint32(nil, 0x184d2a50)
	skippable = binary.LittleEndian.AppendUint32(skippable, 0)
	tests := []struct {
		name string
		head []byte
		want int64 // -1: not ok
	}{
		{"EncodeAll", enc.EncodeAll(data, nil), int64(len(data))},
		// Under 256 bytes and not single segment, the size would take a
		// 1-byte field, which only single-segment frames have.
		{"EncodeAll, 100 bytes", enc.EncodeAll(data[:100], nil), -1},
		{"EncodeAll, 1025 bytes", enc.EncodeAll(data[:1025], nil), 1025},
		{"EncodeAll, empty", enc.EncodeAll(nil, nil), 0},
		{"stream with size", withSize(len(data)), int64(len(data))},
		{"stream with size, 300 bytes", withSize(300), 300},
		{"stream without size", zstdStream(t, data), -1},
		{"first of two frames", append(enc.EncodeAll(data[:5000], nil), enc.EncodeAll(data, nil)...), 5000},
		{"single segment, 1 byte", zstdHeader(0x20, 0, 200), 200},
		{"2 bytes, +256", zstdHeader(0x40, 0, 0xffff), 0xffff + 256},
		{"2 bytes, single segment", zstdHeader(0x60, 0, 0), 256},
		{"4 bytes", zstdHeader(0x80, 0, 0xdeadbeef), 0xdeadbeef},
		{"8 bytes", zstdHeader(0xc0, 0, 5<<40), 5 << 40},
		{"8 bytes, too large", zstdHeader(0xc0, 0, math.MaxInt64+1), -1},
		{"8 bytes, largest", zstdHeader(0xe0, 0, math.MaxInt64), math.MaxInt64},
		{"1-byte dictionary ID", zstdHeader(0x81, 7, 123456), 123456},
		{"2-byte dictionary ID", zstdHeader(0xa2, 0x1234, 70000), 70000},
		{"4-byte dictionary ID", zstdHeader(0xc3, 0x12345678, 1<<33), 1 << 33},
		{"no size", zstdHeader(0x00, 0, 0), -1},
		{"no size, dictionary ID", zstdHeader(0x03, 99, 0), -1},
		{"checksum flag", zstdHeader(0x84, 0, 4096), 4096},
		{"reserved bit", zstdHeader(0x88, 0, 4096), -1},
		{"truncated", zstdHeader(0xc0, 0, 5<<40)[:13], -1},
		{"skippable frame first", append(skippable, enc.EncodeAll(data, nil)...), -1},
		{"not zstd", []byte("\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"), -1},
		{"empty", nil, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, ok := ZstdSize(tt.head)
			if tt.want < 0 && ok || tt.want >= 0 && (!ok || n != tt.want) {
				t.Errorf("ZstdSize = %d, %v; want %d", n, ok, tt.want)
			}
			// It needs no more than ZstdHeadSize bytes.
			if len(tt.head) > ZstdHeadSize {
				if n2, ok2 := ZstdSize(tt.head[:ZstdHeadSize]); n2 != n || ok2 != ok {
					t.Errorf("from %d bytes: %d, %v", ZstdHeadSize, n2, ok2)
				}
			}
			checkZstdSize(t, tt.head)
		})
	}
}

// checkZstdSize compares ZstdSize with the zstd package's header decoder.
func checkZstdSize(t *testing.T, head []byte) {
	t.Helper()
	n, ok := ZstdSize(head)
	var h zstd.Header
	err := h.Decode(head)
	want := err == nil && !h.Skippable && h.HasFCS && h.FrameContentSize <= math.MaxInt64
	if ok != want || ok && uint64(n) != h.FrameContentSize {
		t.Errorf("head % x: ZstdSize = %d, %v; zstd.Header: %+v, %v", head, n, ok, h, err)
	}
}
