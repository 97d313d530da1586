package testdisk

import (
	"bytes"
	"io"
	"testing"
)

func TestDeterministicAndConsistent(t *testing.T) {
	d := New(3*BlockSize + 1000)
	all, err := io.ReadAll(d.Reader())
	if err != nil || int64(len(all)) != d.Size() {
		t.Fatalf("read %d bytes, %v", len(all), err)
	}
	if all[510] != 0x55 || all[511] != 0xaa {
		t.Error("no MBR signature")
	}
	again, _ := io.ReadAll(New(d.Size()).Reader())
	if !bytes.Equal(all, again) {
		t.Error("same size gave different bytes")
	}
	// Reads at odd offsets agree with the whole.
	for _, off := range []int64{0, 1, BlockSize - 3, 2*BlockSize + 7, d.Size() - 10} {
		p := make([]byte, 100)
		n, _ := d.ReadAt(p, off)
		if !bytes.Equal(p[:n], all[off:off+int64(n)]) {
			t.Errorf("ReadAt at %d differs", off)
		}
	}
	if n, err := d.ReadAt(make([]byte, 10), d.Size()); n != 0 || err != io.EOF {
		t.Errorf("ReadAt at the end: %d, %v", n, err)
	}
}
