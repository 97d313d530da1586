package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/diskimporter/diskimporter/importer/qcow2/qcow2test"
	"github.com/diskimporter/diskimporter/layer"
)

// sourceRows are the diskimporter rows that import the same disk in
// another container: the file each serves, made from disk.img on first use.
var sourceRows = map[string]string{
	"diskimporter-qcow2": "disk.qcow2",
	"diskimporter-gz":    "disk.img.gz",
	"diskimporter-xz":    "disk.img.xz",
	"diskimporter-zst":   "disk.img.zst",
}

// toolFiles are the files other tools read instead of disk.img.
var toolFiles = map[string]string{
	"crane": "disk.tar", // the layer itself: crane append takes tarballs
}

// sourceFile returns the name (in s.dir) of the file a row imports,
// making it when it does not exist yet. Making it is not measured, and
// happens in a child process: a child's peak RSS as rusage reports it
// includes the peak of the process that started it, so this one must stay
// small.
func (s *setup) sourceFile(row string) (string, error) {
	name, ok := sourceRows[row]
	if !ok {
		name, ok = toolFiles[row]
	}
	if !ok {
		return "disk.img", nil
	}
	path := filepath.Join(s.dir, name)
	if _, err := os.Stat(path); err == nil {
		return name, nil
	}
	cmd := exec.Command(s.self, "make-source", s.disk, path)
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(path)
		return "", fmt.Errorf("making %s: %v: %s", name, err, out)
	}
	return name, nil
}

// makeSource writes DISK in the container OUT's name asks for.
func makeSource(args []string) (err error) {
	if len(args) != 2 {
		return fmt.Errorf("usage: make-source DISK OUT")
	}
	disk, path := args[0], args[1]
	in, err := os.Open(disk)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}()
	w := bufio.NewWriterSize(out, 1<<20)
	switch filepath.Base(path) {
	case "disk.qcow2":
		guest, err := io.ReadAll(in)
		if err != nil {
			return err
		}
		img, err := qcow2test.Image(guest)
		if err != nil {
			return err
		}
		if _, err := w.Write(img); err != nil {
			return err
		}
	case "disk.img.gz":
		zw := gzip.NewWriter(w)
		if _, err := io.Copy(zw, in); err != nil {
			return err
		}
		if err := zw.Close(); err != nil {
			return err
		}
	case "disk.img.zst":
		// With the content size in the frame header, as the zstd tool
		// writes it for a file: the import needs no spool.
		zw, err := zstd.NewWriter(nil)
		if err != nil {
			return err
		}
		zw.ResetContentSize(w, fi.Size())
		if _, err := io.Copy(zw, in); err != nil {
			return err
		}
		if err := zw.Close(); err != nil {
			return err
		}
	case "disk.tar":
		// The layer diskimporter pushes, as a file.
		if _, err := writeLayer(w, in, fi.Size()); err != nil {
			return err
		}
	case "disk.img.xz":
		// Go's xz encoder takes minutes for a GiB; the xz tool (Debian's
		// xz-utils) does it on both cores.
		cmd := exec.Command("xz", "-T0", "-3", "-c", disk)
		cmd.Stdout, cmd.Stderr = w, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("xz (apt-get install xz-utils): %w", err)
		}
	default:
		return fmt.Errorf("no recipe for %s", path)
	}
	return w.Flush()
}

// layerDigest prints the digest of the layer diskimporter makes of DISK
// with its default options: what every import of it must report.
func layerDigest(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: layer-digest DISK")
	}
	f, err := os.Open(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	l, err := writeLayer(io.Discard, f, fi.Size())
	if err != nil {
		return err
	}
	digest, err := l.Digest()
	if err != nil {
		return err
	}
	_, err = fmt.Println(digest)
	return err
}

// writeLayer writes to w the layer diskimporter makes of the size bytes
// of disk, with its default options, and returns the layer, whose digest
// is then known.
func writeLayer(w io.Writer, disk io.Reader, size int64) (*layer.Layer, error) {
	l, err := layer.New(io.NopCloser(disk), size)
	if err != nil {
		return nil, err
	}
	rc, err := l.Uncompressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	_, err = io.Copy(w, rc)
	return l, err
}

// expectLayerDigest computes, in a child process, the layer digest of
// disk.img.
func (s *setup) expectLayerDigest() error {
	cmd := exec.Command(s.self, "layer-digest", s.disk)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("layer digest of %s: %w: %s", s.disk, err, strings.TrimSpace(stderr.String()))
	}
	s.layerDigest = strings.TrimSpace(string(out))
	return nil
}

// checkSHA256 checks the sha256 row's output against the disk's digest.
func (s *setup) checkSHA256(out []byte) (string, error) {
	if got := strings.TrimSpace(string(out)); got != s.sha256 {
		return "", fmt.Errorf("sha256 printed %q, want %s", got, s.sha256)
	}
	return "sha256 of the disk file in 1 MiB reads: the hash an import does", nil
}

// checkGot checks that the get row read the whole disk.
func (s *setup) checkGot(out []byte) (string, error) {
	if got := strings.TrimSpace(string(out)); got != fmt.Sprint(s.size) {
		return "", fmt.Errorf("get read %s bytes, want %d", got, s.size)
	}
	return "one plain GET of the HTTP source into /dev/null, 1 MiB reads: the read an import does", nil
}
