package qcow2_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/diskimporter/diskimporter/importer/qcow2"
	"github.com/diskimporter/diskimporter/importer/qcow2/qcow2test"
)

func TestBackingFile(t *testing.T) {
	guest := bytes.Repeat([]byte{1}, 64<<10)
	image := func(opts ...qcow2test.Option) []byte {
		t.Helper()
		img, err := qcow2test.Image(guest, opts...)
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	named := image(qcow2test.WithBackingFile("/var/lib/base.qcow2"))
	past := bytes.Clone(named) // the name's offset past the head given
	binary.BigEndian.PutUint64(past[qcow2test.OffBackingOffset:], 1<<20)
	long := image(qcow2test.WithBackingFile(strings.Repeat("b", 300)))
	at := int(binary.BigEndian.Uint64(named[qcow2test.OffBackingOffset:]))

	for _, tc := range []struct {
		name      string
		head      []byte
		wantName  string
		wantNamed bool
	}{
		{"none", image(), "", false},
		{"v2 none", image(qcow2test.V2()), "", false},
		{"named", named, "/var/lib/base.qcow2", true},
		{"v2 named", image(qcow2test.V2(), qcow2test.WithBackingFile("base.img")), "base.img", true},
		{"name past the head", past, "", true},
		{"long name cut", long, strings.Repeat("b", 256), true},
		{"head ends inside the name", named[:at+4], "/var", true},
		{"truncated header", named[:20], "", false},
		{"not qcow2", []byte("hello, world"), "", false},
		{"empty", nil, "", false},
	} {
		name, ok := qcow2.BackingFile(tc.head)
		if name != tc.wantName || ok != tc.wantNamed {
			t.Errorf("%s: BackingFile = %q, %v; want %q, %v", tc.name, name, ok, tc.wantName, tc.wantNamed)
		}
	}
	// BackingFile names what Inspect refuses.
	if _, err := qcow2.Inspect(named[:qcow2.HeadSize], int64(len(named)), 0); !errors.Is(err, qcow2.ErrBackingFile) {
		t.Errorf("Inspect of the named image: %v, want ErrBackingFile", err)
	}
}
