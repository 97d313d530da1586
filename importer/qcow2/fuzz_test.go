package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// smallImage is standardImage with 512-byte clusters: a few KiB, which the
// fuzzer can change quickly.
func smallImage() testImage {
	return testImage{
		clusterBits: 9,
		virtualSize: 64 << 10,
		data:        map[int64][]byte{0: pattern(1, 512), 70: pattern(2, 100), 127: pattern(3, 512)},
		compressed:  map[int64][]byte{3: text(512)},
		zero:        []int64{4},
	}
}

// FuzzInspect checks that Inspect never panics, and that an image it
// accepts opens and reads without a panic, with only classified errors. A
// panic fails the run: nothing here recovers.
func FuzzInspect(f *testing.F) {
	small, _ := smallImage().build(f)
	v2 := smallImage()
	v2.version = 2
	v2Img, _ := v2.build(f)
	// Seeds stay small: the fuzzer minimizes each interesting input for up
	// to a minute, and one of tens of KiB takes all of it. Images with 16
	// KiB clusters (extended L2 entries) are tested in open_test.go.
	const maxSeed = 128 << 10
	for _, seed := range [][]byte{small, v2Img, nil, []byte("QFI\xfb")} {
		f.Add(seed)
	}
	for _, c := range rejectCases() {
		if c.mutate == nil {
			continue
		}
		if bad := c.mutate(f, bytes.Clone(small)); len(bad) <= maxSeed {
			f.Add(bad)
		}
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		head := data[:min(len(data), HeadSize)]
		size := int64(len(data))
		info, err := Inspect(head, size, 0)
		streamed, streamErr := Inspect(head, -1, 0)
		if err != nil {
			if !isClassified(err) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		// What passes with the file's length passes without it.
		if streamErr != nil || *streamed != *info {
			t.Fatalf("Inspect with the length: %+v; without: %+v, %v", info, streamed, streamErr)
		}
		info2, disk, err := Open(bytes.NewReader(data), size, 0)
		if err != nil {
			if !isClassified(err) {
				t.Fatalf("Open: unclassified error %v", err)
			}
			return
		}
		if *info2 != *info {
			t.Fatalf("Open says %+v, Inspect %+v", info2, info)
		}
		readSome(t, disk, int64(info.VirtualSize), info.ClusterSize, data)
	})
}

// readSome reads the disk at its start, middle, end, across a cluster
// boundary and at an offset the input picks.
func readSome(t *testing.T, disk io.ReaderAt, vsize, clusterSize int64, data []byte) {
	t.Helper()
	var picked int64
	if len(data) >= 8 {
		picked = int64(binary.BigEndian.Uint64(data[len(data)-8:]) % uint64(max(vsize, 1)))
	}
	p := make([]byte, 3*512)
	for _, off := range []int64{0, vsize / 2, vsize - 1, clusterSize - 100, picked, vsize, -5} {
		n, err := disk.ReadAt(p, off)
		if n < 0 || n > len(p) {
			t.Fatalf("ReadAt(%d) = %d bytes", off, n)
		}
		switch {
		case off < 0:
			if err == nil {
				t.Fatalf("ReadAt(%d) succeeded", off)
			}
		case err == nil:
			if n != len(p) {
				t.Fatalf("ReadAt(%d) = %d bytes and no error", off, n)
			}
		case err == io.EOF:
			if off+int64(n) < vsize {
				t.Fatalf("ReadAt(%d) = %d, EOF before the end of the %d-byte disk", off, n, vsize)
			}
		case !errors.Is(err, ErrCorrupt) || errors.Is(err, io.EOF):
			t.Fatalf("ReadAt(%d): error %v does not wrap ErrCorrupt alone", off, err)
		}
	}
}
