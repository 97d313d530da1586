package blob_test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/diskimporter/diskimporter/importer/blob"
	"github.com/diskimporter/diskimporter/importer/imagetest"
)

// The GNU sparse formats a sparse test tar is written in.
const (
	pax00  = "PAX 0.0"
	pax01  = "PAX 0.1"
	pax10  = "PAX 1.0"
	oldGNU = "old GNU"
)

// sparseFile is a file with holes: its size and data segments (offset,
// length), the rest zeros.
type sparseFile struct {
	size int64
	segs [][2]int64
}

// bytes is the file as tar -x writes it, the segments' data random.
func (f sparseFile) bytes() []byte {
	b := make([]byte, f.size)
	for i, s := range f.segs {
		copy(b[s[0]:s[0]+s[1]], randomDisk(int(s[1])+i))
	}
	return b
}

// data is the segments' bytes, one after the other, as a tar stores them.
func (f sparseFile) data(b []byte) []byte {
	var d []byte
	for _, s := range f.segs {
		d = append(d, b[s[0]:s[0]+s[1]]...)
	}
	return d
}

// header is a ustar (or, with gnu, GNU) header block; seal sets its
// checksum once its other fields are written.
func header(name string, typeflag byte, size int64, gnu bool) []byte {
	b := make([]byte, 512)
	copy(b, name)
	copy(b[100:], "0000644\x00")
	copy(b[108:], "0000000\x000000000\x00")
	copy(b[124:], fmt.Sprintf("%011o\x00", size))
	copy(b[136:], "00000000000\x00")
	b[156] = typeflag
	if gnu {
		copy(b[257:], "ustar  \x00")
	} else {
		copy(b[257:], "ustar\x0000")
	}
	return b
}

func seal(b []byte) []byte {
	sum := 0
	for i, c := range b {
		if i >= 148 && i < 156 {
			c = ' '
		}
		sum += int(c)
	}
	copy(b[148:], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

func pad(b []byte) []byte { return append(b, make([]byte, (512-len(b)%512)%512)...) }

// paxHeader is a PAX extended header of the records, key and value pairs.
func paxHeader(name string, kv ...string) []byte {
	var recs string
	for i := 0; i < len(kv); i += 2 {
		s := " " + kv[i] + "=" + kv[i+1] + "\n"
		n := len(s) + 1
		for len(strconv.Itoa(n))+len(s) != n {
			n = len(strconv.Itoa(n)) + len(s)
		}
		recs += strconv.Itoa(n) + s
	}
	return append(seal(header("PaxHeaders/"+name, tar.TypeXHeader, int64(len(recs)), false)), pad([]byte(recs))...)
}

// sparseEntry is the tar entry of f (whose bytes are b) in format, as GNU
// tar writes it.
func sparseEntry(format, name string, f sparseFile, b []byte) []byte {
	data := f.data(b)
	size := strconv.FormatInt(f.size, 10)
	var pairs []string
	for _, s := range f.segs {
		pairs = append(pairs, strconv.FormatInt(s[0], 10), strconv.FormatInt(s[1], 10))
	}
	var out []byte
	switch format {
	case pax00:
		kv := []string{"GNU.sparse.size", size, "GNU.sparse.numblocks", strconv.Itoa(len(f.segs))}
		for i := 0; i < len(pairs); i += 2 {
			kv = append(kv, "GNU.sparse.offset", pairs[i], "GNU.sparse.numbytes", pairs[i+1])
		}
		out = append(paxHeader(name, kv...), seal(header(name, tar.TypeReg, int64(len(data)), false))...)
	case pax01:
		out = paxHeader(name, "GNU.sparse.size", size, "GNU.sparse.numblocks", strconv.Itoa(len(f.segs)), "GNU.sparse.map", strings.Join(pairs, ","))
		out = append(out, seal(header(name, tar.TypeReg, int64(len(data)), false))...)
	case pax10:
		m := pad([]byte(strconv.Itoa(len(f.segs)) + "\n" + strings.Join(pairs, "\n") + "\n"))
		out = paxHeader(name, "GNU.sparse.major", "1", "GNU.sparse.minor", "0", "GNU.sparse.name", name, "GNU.sparse.realsize", size)
		out = append(out, seal(header("GNUSparseFile.0/"+filepath.Base(name), tar.TypeReg, int64(len(m)+len(data)), false))...)
		out = append(out, m...)
	case oldGNU:
		out = oldGNUHeader(name, f, int64(len(data)))
	}
	return append(out, pad(data)...)
}

// oldGNUHeader is an old GNU sparse header, its map in the header and
// extension blocks.
func oldGNUHeader(name string, f sparseFile, dataLen int64) []byte {
	h := header(name, tar.TypeGNUSparse, dataLen, true)
	copy(h[483:], fmt.Sprintf("%011o\x00", f.size))
	blocks := [][]byte{h}
	at, room, isExtended := 386, 4, 482
	for _, s := range f.segs {
		if room == 0 {
			blocks[len(blocks)-1][isExtended] = 1
			blocks = append(blocks, make([]byte, 512))
			at, room, isExtended = 0, 21, 504
		}
		copy(blocks[len(blocks)-1][at:], fmt.Sprintf("%011o\x00%011o\x00", s[0], s[1]))
		at, room = at+24, room-1
	}
	seal(h)
	return bytes.Join(blocks, nil)
}

// regular is the tar entry of a regular file.
func regular(name, content string) []byte {
	return append(seal(header(name, tar.TypeReg, int64(len(content)), false)), pad([]byte(content))...)
}

// sparseLayerTar is a layer tar holding a sparse file before the disk,
// then the sparse disk, then another file.
func sparseLayerTar(format string, disk sparseFile, b []byte) []byte {
	other := sparseFile{size: 100 << 10, segs: [][2]int64{{512, 3000}, {50000, 1}, {100 << 10, 0}}}
	global := paxHeader("global", "comment", "a global header")
	global[156] = tar.TypeXGlobalHeader
	seal(global[:512])
	t := global
	t = append(t, regular("etc/notes.txt", "notes")...)
	t = append(t, sparseEntry(format, "var/other.bin", other, other.bytes())...)
	t = append(t, seal(header("disk/", tar.TypeDir, 0, false))...)
	t = append(t, sparseEntry(format, "disk/disk.img", disk, b)...)
	t = append(t, regular("trailer.txt", "the end")...)
	return append(t, make([]byte, 1024)...)
}

// sparseDisk has holes at its start, middle and end, data segments
// across chunk boundaries and more segments than an old GNU header holds.
func sparseDisk() sparseFile {
	f := sparseFile{size: 1_400_017}
	for i := range int64(30) {
		f.segs = append(f.segs, [2]int64{i * 40_000, 1 + i*500})
	}
	f.segs = append(f.segs, [2]int64{1_200_000, 140_000}, [2]int64{f.size, 0})
	return f
}

func TestSparseTarIsReadByArchiveTar(t *testing.T) {
	t.Parallel()
	f := sparseDisk()
	want := f.bytes()
	for _, format := range []string{pax00, pax01, pax10, oldGNU} {
		tr := tar.NewReader(bytes.NewReader(sparseLayerTar(format, f, want)))
		for {
			h, err := tr.Next()
			if err != nil {
				t.Fatalf("%s: %v", format, err)
			}
			if h.Name == "disk/disk.img" {
				got, err := io.ReadAll(tr)
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("%s: archive/tar reads %d bytes (%v), want the %d of the disk", format, len(got), err, len(want))
				}
				break
			}
		}
	}
}

func TestSparseDisk(t *testing.T) {
	t.Parallel()
	f := sparseDisk()
	want := f.bytes()
	for _, format := range []string{pax00, pax01, pax10, oldGNU} {
		for _, kind := range []string{"uncompressed", "gzip", "zstd"} {
			t.Run(format+" "+kind, func(t *testing.T) {
				t.Parallel()
				layer := sparseLayerTar(format, f, want)
				var l v1.Layer
				switch kind {
				case "uncompressed":
					l = static.NewLayer(layer, types.OCIUncompressedLayer)
				case "gzip":
					l = static.NewLayer(imagetest.Gzip(layer), types.OCILayer)
				case "zstd":
					l = static.NewLayer(zstdOf(layer), types.OCILayerZStd)
				}
				checkSparse(t, imagetest.Image(t, l), want, kind == "uncompressed")
			})
		}
	}
}

// checkSparse opens img's disk and reads it with each reader it has.
func checkSparse(t *testing.T, img v1.Image, want []byte, ranged bool) {
	t.Helper()
	reg := newTestRegistry(t, false)
	ref := reg.push(t, "disks/sparse", img)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := blob.Open(ctx, ref, reg.options())
	if err != nil {
		t.Fatal(err)
	}
	if d.Path != "disk/disk.img" || d.Size != int64(len(want)) || d.CanResume() != ranged {
		t.Fatalf("found %s, %d bytes, resumable %v; want disk/disk.img, %d, %v", d.Path, d.Size, d.CanResume(), len(want), ranged)
	}
	r, err := d.Reader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Reader: %d bytes (%v), want the %d of the disk", len(got), err, len(want))
	}
	if !ranged {
		return
	}
	ra := d.ReaderAt(ctx)
	for _, at := range [][2]int64{{0, 5000}, {99_990, 300}, {1_034_567, 70_000}, {int64(len(want)) - 250_000, 250_000}, {1_199_999, 2}} {
		p := make([]byte, at[1])
		if n, err := ra.ReadAt(p, at[0]); n != len(p) || (err != nil && err != io.EOF) || !bytes.Equal(p, want[at[0]:at[0]+at[1]]) {
			t.Errorf("ReadAt(%d bytes at %d): %d, %v, or other bytes", at[1], at[0], n, err)
		}
	}
	for _, cut := range []int64{0, 100_500, 1_250_000, int64(len(want))} {
		first, err := d.ResumableReader(ctx, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		head, state, err := readPart(t, first, cut)
		first.Close()
		if err != nil {
			t.Fatal(err)
		}
		checkVerifyPrefix(t, d, want, cut, state)
		rest, err := d.ResumableReader(ctx, cut, state)
		if err != nil {
			t.Fatalf("resuming at %d: %v", cut, err)
		}
		tail, _, err := readPart(t, rest, -1)
		rest.Close()
		if err != nil || !bytes.Equal(append(head, tail...), want) {
			t.Fatalf("resumed at %d: %d+%d bytes (%v), want the %d of the disk", cut, len(head), len(tail), err, len(want))
		}
	}
}

// checkVerifyPrefix: the disk's first cut bytes verify against the state
// after them, and not once a data byte or a hole byte is changed.
func checkVerifyPrefix(t *testing.T, d *blob.Disk, disk []byte, cut int64, state []byte) {
	t.Helper()
	ctx := t.Context()
	if ok, err := d.VerifyPrefix(ctx, bytes.NewReader(disk), cut, state); !ok || err != nil {
		t.Errorf("VerifyPrefix of the disk's first %d bytes: %v, %v; want true", cut, ok, err)
	}
	for _, at := range []int64{40_000, 20_000} { // in a data segment, in a hole
		if at >= cut {
			continue
		}
		bad := bytes.Clone(disk)
		bad[at] ^= 0xff
		if ok, err := d.VerifyPrefix(ctx, bytes.NewReader(bad), cut, state); ok || err != nil {
			t.Errorf("VerifyPrefix with byte %d changed: %v, %v; want false", at, ok, err)
		}
	}
}

// TestSparseDiskFromGNUTar checks against the tar GNU tar writes, when it
// is installed.
func TestSparseDiskFromGNUTar(t *testing.T) {
	t.Parallel()
	gnutar, err := exec.LookPath("tar")
	if err != nil {
		t.Skip("no tar")
	}
	if out, err := exec.Command(gnutar, "--version").Output(); err != nil || !bytes.Contains(out, []byte("GNU tar")) {
		t.Skip("tar is not GNU tar")
	}
	dir := t.TempDir()
	f := sparseDisk()
	want := f.bytes()
	if err := os.Mkdir(filepath.Join(dir, "disk"), 0o755); err != nil {
		t.Fatal(err)
	}
	file, err := os.Create(filepath.Join(dir, "disk", "disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range f.segs {
		if _, err := file.WriteAt(want[s[0]:s[0]+s[1]], s[0]); err != nil {
			t.Fatal(err)
		}
	}
	if err := file.Truncate(f.size); err != nil {
		t.Fatal(err)
	}
	file.Close()
	for _, args := range [][]string{
		{"--format=posix", "--sparse-version=0.0"}, {"--format=posix", "--sparse-version=0.1"},
		{"--format=posix", "--sparse-version=1.0"}, {"--format=gnu"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			t.Parallel()
			out := filepath.Join(t.TempDir(), "layer.tar")
			cmd := exec.Command(gnutar, append(args, "--sparse", "-C", dir, "-cf", out, "disk")...)
			if b, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%v: %v: %s", cmd.Args, err, b)
			}
			layer, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			checkSparse(t, imagetest.Image(t, static.NewLayer(layer, types.OCIUncompressedLayer)), want, true)
		})
	}
}
