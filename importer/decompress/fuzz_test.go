package decompress

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/diskimporter/diskimporter/importer/detect"
)

// FuzzXZSize checks that XZSize never panics, and that whenever it finds a
// size and the file decodes, the two agree.
func FuzzXZSize(f *testing.F) {
	data := disk(f, 3000)
	one := xzCompress(f, xz.WriterConfig{DictCap: 1 << 12}, data)
	blocks := xzCompress(f, xz.WriterConfig{DictCap: 1 << 12, BlockSize: 700}, data)
	empty := xzCompress(f, xz.WriterConfig{DictCap: 1 << 12}, nil)
	f.Add(one)
	f.Add(blocks)
	f.Add(empty)
	f.Add(append(append(append([]byte{}, one...), 0, 0, 0, 0), empty...))
	f.Add(fakeXZStream([]xzRecord{{5, 0}, {17, 1 << 40}}))
	f.Add(fakeXZFooter(0xffffffff, []byte{0, 1}))
	f.Add(one[:len(one)-4])
	bad := bytes.Clone(one)
	bad[len(bad)-14] ^= 0x40
	f.Add(bad)
	f.Add(make([]byte, 32))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := XZSize(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			if !errors.Is(err, ErrNoSize) {
				t.Fatalf("error %v is not ErrNoSize", err)
			}
			return
		}
		if n < 0 {
			t.Fatalf("size %d", n)
		}
		if n > 1<<20 {
			return
		}
		// Decode at most 1 MiB more than the index says: a corrupt
		// block may decode to more, until the decoder finds out.
		r, err := NewReader(detect.XZ, bytes.NewReader(b))
		if err != nil {
			return
		}
		defer r.Close()
		limit := n + 1<<20
		got, err := io.Copy(io.Discard, io.LimitReader(r, limit))
		if err == nil && got < limit && got != n {
			t.Fatalf("XZSize = %d, the decoder gives %d bytes without error", n, got)
		}
	})
}

// FuzzZstdSize checks that ZstdSize never panics and agrees with the zstd
// package's frame header decoder.
func FuzzZstdSize(f *testing.F) {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		f.Fatal(err)
	}
	data := disk(f, 5000)
	f.Add(enc.EncodeAll(data, nil))
	f.Add(enc.EncodeAll(data[:10], nil))
	f.Add(zstdStream(f, data)[:ZstdHeadSize])
	f.Add(zstdHeader(0xc3, 0xffffffff, 1<<63))
	f.Add(zstdHeader(0x62, 0x1234, 0))
	f.Add(zstdHeader(0x88, 0, 4096))
	f.Add(binary.LittleEndian.AppendUint32(nil, 0x184d2a5f))
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd})
	f.Fuzz(func(t *testing.T, head []byte) {
		checkZstdSize(t, head)
	})
}
