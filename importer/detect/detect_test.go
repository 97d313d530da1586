package detect

import "testing"

func at(off int, sig string) []byte {
	b := make([]byte, HeadSize)
	copy(b[off:], sig)
	return b
}

func TestFormatOf(t *testing.T) {
	for _, tc := range []struct {
		name string
		head []byte
		want Format
	}{
		{"empty", nil, Raw},
		{"zeros", make([]byte, HeadSize), Raw},
		{"mbr", at(510, "\x55\xaa"), Raw},
		{"qcow2", at(0, "QFI\xfb\x00\x00\x00\x03"), QCOW2},
		{"iso", at(0x8001, "CD001"), ISO},
		{"iso signature cut off", at(0x8001, "CD001")[:HeadSize-1], Raw},
		{"vmdk sparse", at(0, "KDMV"), VMDK},
		{"vmdk descriptor", at(0, "# Disk DescriptorFile\nversion=1"), VMDK},
		{"vhdx", at(0, "vhdxfile"), VHDX},
		{"vhd dynamic", at(0, "conectix"), VHD},
		{"vdi", at(64, "\x7f\x10\xda\xbe"), VDI},
		{"qcow2 magic late", at(1, "QFI\xfb"), Raw},
	} {
		if got := FormatOf(tc.head); got != tc.want {
			t.Errorf("%s: FormatOf = %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestCompressionOf(t *testing.T) {
	for _, tc := range []struct {
		name string
		head string
		want Compression
	}{
		{"empty", "", None},
		{"gzip", "\x1f\x8b\x08\x00", Gzip},
		{"xz", "\xfd7zXZ\x00\x00", XZ},
		{"zstd", "\x28\xb5\x2f\xfd\x00", Zstd},
		{"bzip2", "BZh91AY&SY", Bzip2},
		{"bzip2 bad level", "BZh0", None},
		{"text starting BZh", "BZh", None},
		{"qcow2", "QFI\xfb", None},
	} {
		if got := CompressionOf([]byte(tc.head)); got != tc.want {
			t.Errorf("%s: CompressionOf = %s, want %s", tc.name, got, tc.want)
		}
	}
}
