package decompress

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"slices"
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

// xzParallelSeeds returns small .xz files whose blocks the decoder hands
// to workers.
func xzParallelSeeds(tb testing.TB) [][]byte {
	data := disk(tb, 3000)
	small := func(n, dict int) xzTestBlock { return xzTestBlock{data: data[:n], dict: dict} }
	one := buildXZ(tb, xzCheckCRC32, small(700, 4096), small(1, 4096), small(2000, 8192), xzTestBlock{})
	checks := slices.Concat(buildXZ(tb, xzCheckCRC64, small(300, 4096), small(500, 4096)), make([]byte, 4),
		buildXZ(tb, xzCheckSHA256, small(100, 4096)), buildXZ(tb, xzCheckNone, small(400, 4096), small(3000, 4096)))
	mixed := buildXZ(tb, xzCheckCRC32, small(600, 4096), xzTestBlock{data: data[:900], dict: 4096, noSizes: true}, small(1500, 4096))
	return [][]byte{one, checks, mixed}
}

// FuzzXZParallel checks that the blocks of an .xz file decoded on workers
// decode as serially: to the same bytes as far as both go, with the same
// kind of end when both end before fuzzMaxOutput bytes, and to the same
// output when one of them decodes the input to its end. Two workers read
// the input in pieces, one worker with too little memory for two blocks
// at once reads it whole.
func FuzzXZParallel(f *testing.F) {
	seeds := xzParallelSeeds(f)
	for _, s := range seeds {
		f.Add(s)
	}
	f.Add(seeds[0][:len(seeds[0])-30])
	bad := slices.Clone(seeds[0])
	bad[len(bad)/2] ^= 0x10
	f.Add(bad)
	f.Fuzz(func(t *testing.T, in []byte) {
		ser := decodeBoundedWith(t, detect.XZ, bytes.NewReader(in), xzOptions{})
		for _, par := range []decoded{
			decodeBoundedWith(t, detect.XZ, &chunkReader{b: in, next: len(in) % 13}, xzOptions{workers: 2, memory: XZParallelMemory}),
			decodeBoundedWith(t, detect.XZ, bytes.NewReader(in), xzOptions{workers: 1, memory: 64 << 10}),
		} {
			n := min(len(ser.out), len(par.out))
			if !bytes.Equal(ser.out[:n], par.out[:n]) {
				t.Fatalf("the output differs from the serial decoder's from byte %d", firstDiffByte(ser.out, par.out))
			}
			switch {
			case ser.end == par.end && (ser.end != "EOF" || len(ser.out) == len(par.out)):
			case ser.end == "limit" && par.end != "EOF", par.end == "limit" && ser.end != "EOF":
			default:
				t.Fatalf("%d bytes and %s (%v); serially %d bytes and %s (%v)", len(par.out), par.end, par.err, len(ser.out), ser.end, ser.err)
			}
		}
	})
}
