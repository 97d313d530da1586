package layer

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TestOpenFrom: from any checkpoint a reader recorded, and any byte at or
// after it, OpenFrom hands out exactly the rest of the stream, reads the
// disk again only from the checkpoint's disk byte, and ends with the digest
// of the whole stream (and of the disk).
func TestOpenFrom(t *testing.T) {
	t.Parallel()
	for _, size := range []int{1, 511, 4096, 70_001} {
		data := disk(size)
		var cps []Checkpoint
		var wantDisk v1.Hash
		newLayer := func() *Layer {
			l, err := New(io.NopCloser(bytes.NewReader(data)), int64(size), WithBuffers(2, 1024),
				WithCheckpoints(2048, func(cp Checkpoint) { cps = append(cps, cp) }),
				WithContentDigest(func(h v1.Hash) { wantDisk = h }))
			if err != nil {
				t.Fatal(err)
			}
			return l
		}
		l := newLayer()
		full := readAll(t, l)
		want, _ := l.Digest()
		if len(cps) == 0 && len(full) > 2048 {
			t.Fatalf("size %d: no checkpoint in a %d-byte stream", size, len(full))
		}
		sumDisk := sha256.Sum256(data)
		if wantDisk.Hex != fmt.Sprintf("%x", sumDisk) {
			t.Fatalf("size %d: disk digest %s", size, wantDisk)
		}
		for _, cp := range append([]Checkpoint{{}}, cps...) {
			for _, from := range []int64{cp.Offset, cp.Offset + 1, cp.Offset + 700, int64(len(full))} {
				if from > int64(len(full)) {
					continue
				}
				l := newLayer()
				var openedAt int64 = -1
				rc, err := l.OpenFrom(cp, from, func(off int64) (io.ReadCloser, error) {
					openedAt = off
					return io.NopCloser(bytes.NewReader(data[off:])), nil
				})
				if err != nil {
					t.Fatalf("size %d, checkpoint %d, from %d: %v", size, cp.Offset, from, err)
				}
				got, err := io.ReadAll(rc)
				rc.Close()
				if err != nil || !bytes.Equal(got, full[from:]) {
					t.Fatalf("size %d, checkpoint %d, from %d: %d bytes (%v), want the %d after it", size, cp.Offset, from, len(got), err, len(full)-int(from))
				}
				if d, err := l.Digest(); err != nil || d != want {
					t.Errorf("size %d, checkpoint %d, from %d: digest %v (%v), want %v", size, cp.Offset, from, d, err, want)
				}
				diskAt := min(max(cp.Offset-int64(len(l.header)), 0), int64(size))
				if cp.Offset < int64(len(l.header))+int64(size) && openedAt != diskAt {
					t.Errorf("size %d, checkpoint %d: the disk was opened at %d, want %d", size, cp.Offset, openedAt, diskAt)
				}
			}
		}
	}
}

// TestOpenFromRefuses: a checkpoint of another position, or a byte before
// the checkpoint, is refused before anything is read.
func TestOpenFromRefuses(t *testing.T) {
	t.Parallel()
	data := disk(8192)
	var cps []Checkpoint
	l, err := New(io.NopCloser(bytes.NewReader(data)), 8192, WithBuffers(2, 1024), WithCheckpoints(1024, func(cp Checkpoint) { cps = append(cps, cp) }))
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, l)
	open := func(int64) (io.ReadCloser, error) { return nil, errors.New("must not be opened") }
	moved := cps[1]
	moved.Offset = cps[2].Offset
	for name, tc := range map[string]struct {
		cp   Checkpoint
		from int64
	}{
		"state of another offset":    {moved, moved.Offset},
		"byte before the checkpoint": {cps[1], cps[1].Offset - 1},
		"state without an offset":    {Checkpoint{Offset: 0, Layer: cps[0].Layer}, 0},
		"past the end":               {Checkpoint{}, 1 << 30},
	} {
		if _, err := l.OpenFrom(tc.cp, tc.from, open); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
