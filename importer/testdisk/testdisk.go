// Package testdisk generates deterministic, disk-like images for demos,
// tests and benchmarks, so that no large fixture has to live in git.
//
// A disk starts with an MBR partition table and is made of 64 KiB blocks,
// in a fixed mix like that of a used file system: a third incompressible
// (random, as compressed or encrypted files are), a third zeros (free
// space), a third repetitive text. The same size always gives the same
// bytes.
package testdisk

import (
	"encoding/binary"
	"io"
	"math/rand/v2"
)

// BlockSize is the unit in which the kind of content changes.
const BlockSize = 64 << 10

// Disk is a generated disk image of a fixed size. It is an io.ReaderAt;
// Reader returns a reader of the whole image.
type Disk struct {
	size int64
}

// New returns a disk image of size bytes.
func New(size int64) *Disk { return &Disk{size: size} }

// Size returns the image's size in bytes.
func (d *Disk) Size() int64 { return d.size }

// Reader returns a reader (and seeker) of the whole image.
func (d *Disk) Reader() *io.SectionReader { return io.NewSectionReader(d, 0, d.size) }

// ReadAt implements io.ReaderAt.
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	if off >= d.size {
		return 0, io.EOF
	}
	var err error
	if rem := d.size - off; int64(len(p)) > rem {
		p, err = p[:rem], io.EOF
	}
	n := 0
	var block [BlockSize]byte
	for n < len(p) {
		idx := (off + int64(n)) / BlockSize
		within := (off + int64(n)) % BlockSize
		fillBlock(block[:], idx)
		n += copy(p[n:], block[within:])
	}
	return n, err
}

const text = "The quick brown fox jumps over the lazy dog; /usr/lib/x86_64-linux-gnu/libc.so.6\n"

func fillBlock(b []byte, idx int64) {
	switch idx % 3 {
	case 0:
		var seed [32]byte
		binary.LittleEndian.PutUint64(seed[:], uint64(idx))
		rand.NewChaCha8(seed).Read(b)
	case 1:
		clear(b)
	case 2:
		for i := 0; i < len(b); i += len(text) {
			copy(b[i:], text)
		}
	}
	if idx == 0 {
		writeMBR(b[:512])
	}
}

// writeMBR writes a partition table with one Linux partition covering the
// disk after the first MiB.
func writeMBR(b []byte) {
	clear(b)
	entry := b[446:462]
	entry[4] = 0x83                                    // Linux
	binary.LittleEndian.PutUint32(entry[8:], 2048)     // first LBA
	binary.LittleEndian.PutUint32(entry[12:], 1<<20-1) // sectors
	b[510], b[511] = 0x55, 0xaa
}
