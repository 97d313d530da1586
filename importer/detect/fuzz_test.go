package detect

import (
	"bytes"
	"slices"
	"testing"
)

var (
	formats      = []Format{Raw, QCOW2, ISO, VMDK, VHD, VHDX, VDI}
	compressions = []Compression{None, Gzip, XZ, Zstd, Bzip2}
)

// FuzzDetect checks FormatOf and CompressionOf on any input, the empty one
// included: they never panic, they answer from their documented sets, they
// look at the first HeadSize bytes only, a verdict reached on a prefix of
// the input stays the same when more bytes follow (so a short read at the
// start of a source cannot turn, say, a qcow2 into a vmdk), and no input is
// both compressed and a disk format told by its first bytes.
//
// The input is front, then, when back is not empty, zeros up to
// backOffset and back: so that the ISO signature, 32 KiB in, is in reach
// of small inputs, which the fuzzer mutates and minimizes quickly (it
// spends up to a minute minimizing each new input of tens of KiB).
func FuzzDetect(f *testing.F) {
	for _, seed := range [][]byte{
		nil,
		[]byte("QFI\xfb\x00\x00\x00\x03"),
		[]byte("KDMV"),
		[]byte("# Disk DescriptorFile\nversion=1"),
		[]byte("vhdxfile"),
		[]byte("conectix"),
		at(64, "\x7f\x10\xda\xbe")[:80],
		at(510, "\x55\xaa")[:512],
		[]byte("\x1f\x8b\x08\x00"), []byte("\xfd7zXZ\x00\x00\x04"), []byte("\xfd7zXZ"), []byte("\x28\xb5\x2f\xfd\x00"),
		[]byte("BZh91AY&SY"), []byte("BZh0"), []byte("BZh"), []byte("QFI"), []byte("# Disk Descriptor"),
	} {
		f.Add(seed, []byte(nil))
	}
	iso := []byte("\x00\x00\x00\x00\x00\x00\x00\x00\x01CD001\x01")
	f.Add([]byte(nil), iso)                              // an ISO
	f.Add([]byte(nil), iso[:len(iso)-1])                 // ending with its signature
	f.Add([]byte(nil), iso[:len(iso)-2])                 // cut in its signature
	f.Add([]byte("\x1f\x8b\x08\x00"), iso)               // compressed, with CD001 inside
	f.Add([]byte("QFI\xfb\x00\x00\x00\x03"), iso)        // a qcow2 with CD001 inside
	f.Add(at(64, "\x7f\x10\xda\xbe")[:80], []byte("CD")) // a VDI

	f.Fuzz(func(t *testing.T, front, back []byte) {
		b := front
		if len(back) > 0 {
			b = make([]byte, max(len(front), backOffset)+len(back))
			copy(b, front)
			copy(b[max(len(front), backOffset):], back)
		}
		orig := bytes.Clone(b)
		format, compression := FormatOf(b), CompressionOf(b)
		if !slices.Contains(formats, format) {
			t.Fatalf("FormatOf = %q, not a documented format", format)
		}
		if !slices.Contains(compressions, compression) {
			t.Fatalf("CompressionOf = %q, not a documented compression", compression)
		}
		head := b[:min(len(b), HeadSize)]
		if got := FormatOf(head); got != format {
			t.Fatalf("FormatOf of the first %d bytes = %s, of all %d = %s", len(head), got, len(b), format)
		}
		if got := CompressionOf(head); got != compression {
			t.Fatalf("CompressionOf of the first %d bytes = %s, of all %d = %s", len(head), got, len(b), compression)
		}
		// Cut the input where the signatures start and end: every prefix is
		// unrecognised or recognised as the whole.
		for _, k := range cuts(len(head)) {
			if got := FormatOf(head[:k]); got != Raw && got != format {
				t.Fatalf("FormatOf of the first %d bytes = %s, of all %d = %s", k, got, len(b), format)
			}
			if got := CompressionOf(head[:k]); got != None && got != compression {
				t.Fatalf("CompressionOf of the first %d bytes = %s, of all %d = %s", k, got, len(b), compression)
			}
		}
		// The compression magics and the disk magics at offset 0 exclude
		// each other. (VDI and ISO signatures lie further in, where
		// compressed bytes may hold anything.)
		switch format {
		case QCOW2, VMDK, VHD, VHDX:
			if compression != None {
				t.Fatalf("both %s and %s-compressed", format, compression)
			}
		}
		// Same input, same answer: neither keeps state nor changes b.
		if FormatOf(b) != format || CompressionOf(b) != compression || !bytes.Equal(b, orig) {
			t.Fatal("a second call answered differently or changed the input")
		}
	})
}

// backOffset is where FuzzDetect puts its second input: the ISO
// signature is at back[9:14] when front is shorter.
const backOffset = isoOffset - 9

// cuts returns the prefix lengths at which a verdict can change, up to n:
// every length up to the end of the VDI signature, and around the ISO one.
func cuts(n int) []int {
	var ks []int
	for k := 0; k <= min(n, 70); k++ {
		ks = append(ks, k)
	}
	for _, k := range []int{isoOffset, HeadSize - 1} {
		if k <= n {
			ks = append(ks, k)
		}
	}
	return ks
}
