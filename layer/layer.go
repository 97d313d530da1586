// Package layer implements a single-pass, uncompressed OCI layer that wraps a
// disk image in a tar stream as it is read.
//
// The tar holds one directory, disk/, and one file, disk/<name>, owned by
// uid/gid 107 with mode 0440 and a fixed modification time, so the same disk
// always gives the same layer digest and KubeVirt can run the image as a
// containerDisk.
//
// The layer's digest is computed while the stream is read. Until a reader has
// returned a clean io.EOF, Digest, DiffID and Size return an error that
// satisfies errors.Is(err, stream.ErrNotComputed), which makes
// go-containerregistry's remote package take its lazy (streaming) upload path.
// A read error leaves the digest unknown: it is never the digest of partial
// data.
package layer

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"hash"
	"io"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/diskimporter/diskimporter/importer/hashstate"
	"github.com/diskimporter/diskimporter/importer/reason"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/stream"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	// DefaultDiskName is the file name of the disk inside disk/ when
	// WithDiskName is not given.
	DefaultDiskName = "disk.img"

	// Dir is the directory that holds the disk in the tar stream.
	Dir = "disk/"

	// OwnerID is the uid and gid of the disk file: KubeVirt's qemu user.
	OwnerID = 107

	blockSize   = 512
	trailerSize = 2 * blockSize
)

// ModTime is the fixed modification time of every entry, so that the layer
// digest depends only on the disk name and content.
var ModTime = time.Unix(0, 0).UTC()

// ErrSizeMismatch is returned by a reader of the layer when the source yields
// fewer or more bytes than the size the layer was created with: the
// SourceTruncated reason.
var ErrSizeMismatch = reason.ErrSourceTruncated

// ErrCheckpoint: a Checkpoint given to OpenFrom is not one of this layer.
var ErrCheckpoint = errors.New("the checkpoint does not fit the layer")

// Layer is a v1.Layer whose blob is an uncompressed tar stream holding one
// disk file. Create it with New. It must be used through its pointer.
type Layer struct {
	size      int64
	diskName  string
	header    []byte
	mediaType types.MediaType
	onContent func(v1.Hash)
	bufSize   int
	buffers   int
	// every and onCheckpoint: see WithCheckpoints.
	every        int64
	onCheckpoint func(Checkpoint)

	mu       sync.Mutex
	first    io.ReadCloser // the reader given to New until the first open
	opened   bool
	digest   v1.Hash
	tarSize  int64
	complete bool
}

var _ v1.Layer = (*Layer)(nil)

// Option configures a Layer.
type Option func(*Layer) error

// WithDiskName sets the name of the disk file inside disk/. The default is
// DefaultDiskName. The name must be a plain file name.
func WithDiskName(name string) Option {
	return func(l *Layer) error {
		if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\\\x00") {
			return fmt.Errorf("disk name %q must be a plain file name", name)
		}
		l.diskName = name
		return nil
	}
}

// WithMediaType sets the layer media type. The default is
// types.OCIUncompressedLayer; types.DockerUncompressedLayer is the other
// accepted value.
func WithMediaType(mt types.MediaType) Option {
	return func(l *Layer) error {
		if mt != types.OCIUncompressedLayer && mt != types.DockerUncompressedLayer {
			return fmt.Errorf("media type %q is not an uncompressed layer type (want %s or %s)",
				mt, types.OCIUncompressedLayer, types.DockerUncompressedLayer)
		}
		l.mediaType = mt
		return nil
	}
}

// WithContentDigest makes every reader also compute the sha256 of the disk
// content alone (the bytes of disk/<name>, without tar headers), on another
// goroutine in parallel with the layer digest, and pass it to fn when the
// reader reaches a clean end. fn is not called after a failed read.
func WithContentDigest(fn func(v1.Hash)) Option {
	return func(l *Layer) error {
		l.onContent = fn
		return nil
	}
}

// WithBuffers sets how many buffers of what size the reader uses to overlap
// reading and hashing the source with the consumer of the stream. The
// defaults are 4 buffers of 1 MiB; memory in use is count × size per open
// reader.
func WithBuffers(count, size int) Option {
	return func(l *Layer) error {
		if count < 2 || size < blockSize {
			return fmt.Errorf("buffers: need at least 2 buffers of at least %d bytes, got %d of %d", blockSize, count, size)
		}
		l.buffers, l.bufSize = count, size
		return nil
	}
}

// New returns a layer that streams size bytes of disk content from rc inside
// a tar entry. rc is read by the first call to Compressed or Uncompressed and
// closed by that reader's Close. A source that ends early, or that holds more
// than size bytes, fails the read with ErrSizeMismatch.
func New(rc io.ReadCloser, size int64, opts ...Option) (*Layer, error) {
	if size < 0 {
		return nil, fmt.Errorf("disk size %d is negative", size)
	}
	l := &Layer{
		size:      size,
		diskName:  DefaultDiskName,
		mediaType: types.OCIUncompressedLayer,
		first:     rc,
		bufSize:   1 << 20,
		buffers:   4,
	}
	for _, o := range opts {
		if err := o(l); err != nil {
			return nil, err
		}
	}
	hdr, err := tarHeader(l.diskName, size)
	if err != nil {
		return nil, err
	}
	l.header = hdr
	return l, nil
}

// tarHeader returns the bytes that precede the disk content: the disk/
// directory entry and the header of the disk file.
func tarHeader(name string, size int64) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	entries := []*tar.Header{
		{Typeflag: tar.TypeDir, Name: Dir, Mode: 0o555},
		{Typeflag: tar.TypeReg, Name: path.Join(Dir, name), Mode: 0o440, Size: size},
	}
	for _, h := range entries {
		h.Uid, h.Gid = OwnerID, OwnerID
		h.ModTime = ModTime
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("writing tar header for %s: %w", h.Name, err)
		}
	}
	// The tar.Writer is abandoned here: the content and trailer are streamed
	// by the reader, so tw.Close must not run.
	return buf.Bytes(), nil
}

// TarSize returns the size of the layer blob for a disk of size bytes with
// the given file name: headers, content, padding and the end-of-archive
// trailer.
func TarSize(name string, size int64) (int64, error) {
	hdr, err := tarHeader(name, size)
	if err != nil {
		return 0, err
	}
	return int64(len(hdr)) + size + padding(size) + trailerSize, nil
}

func padding(size int64) int64 { return (blockSize - size%blockSize) % blockSize }

// DiskPath returns the path of the disk file inside the layer, such as
// "disk/disk.img".
func (l *Layer) DiskPath() string { return path.Join(Dir, l.diskName) }

// Digest returns the sha256 of the tar stream once a reader has reached a
// clean end, and an error wrapping stream.ErrNotComputed before that.
func (l *Layer) Digest() (v1.Hash, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.complete {
		return v1.Hash{}, stream.ErrNotComputed
	}
	return l.digest, nil
}

// DiffID equals Digest: the layer is not compressed.
func (l *Layer) DiffID() (v1.Hash, error) { return l.Digest() }

// Size returns the size of the tar stream once a reader has reached a clean
// end, and an error wrapping stream.ErrNotComputed before that.
func (l *Layer) Size() (int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.complete {
		return 0, stream.ErrNotComputed
	}
	return l.tarSize, nil
}

// MediaType returns the layer's media type.
func (l *Layer) MediaType() (types.MediaType, error) { return l.mediaType, nil }

// Compressed returns the tar stream, once: a second call (of it or of
// Uncompressed) fails with stream.ErrConsumed; OpenFrom reads the stream
// again. The blob is not compressed, so this is the same stream as
// Uncompressed.
func (l *Layer) Compressed() (io.ReadCloser, error) { return l.open() }

// Uncompressed returns the tar stream.
func (l *Layer) Uncompressed() (io.ReadCloser, error) { return l.open() }

func (l *Layer) open() (io.ReadCloser, error) {
	l.mu.Lock()
	src := l.first
	first := !l.opened
	l.first, l.opened = nil, true
	l.mu.Unlock()
	if !first {
		return nil, stream.ErrConsumed // OpenFrom reads it again
	}
	return newReader(l, src, start{}), nil
}

// A Checkpoint is the state of a layer's hashes after its first Offset
// bytes: a reader opened with OpenFrom goes on from there without reading
// those bytes again. Layer and Disk are marshaled crypto/sha256 states
// (about 100 bytes each) of the tar stream and, with WithContentDigest, of
// the disk's bytes within it; the zero Checkpoint is the stream's start.
type Checkpoint struct {
	Offset int64
	Layer  []byte
	Disk   []byte
}

// WithCheckpoints makes every reader call fn with a Checkpoint each time
// the stream passes a multiple of every bytes, at the end of the buffer
// (a multiple of 512 bytes) that crossed it, on the goroutine that hashes
// the stream: fn must return quickly. every must be positive.
func WithCheckpoints(every int64, fn func(Checkpoint)) Option {
	return func(l *Layer) error {
		if every <= 0 {
			return fmt.Errorf("checkpoint interval %d: want a positive byte count", every)
		}
		l.every, l.onCheckpoint = every, fn
		return nil
	}
}

// checkpoint calls the WithCheckpoints function when a buffer of n bytes
// that ended at stream position at crossed a multiple of the interval.
func (l *Layer) checkpoint(at, n int64, layer, disk hash.Hash) {
	if l.onCheckpoint == nil || n == 0 || (at-n)/l.every == at/l.every {
		return
	}
	cp := Checkpoint{Offset: at, Layer: hashstate.Save(layer)}
	if disk != nil {
		cp.Disk = hashstate.Save(disk)
	}
	l.onCheckpoint(cp)
}

// OpenFrom returns the tar stream from byte from on, its hashes going on
// from cp (cp.Offset <= from; the zero Checkpoint: from the start). The
// stream's bytes from cp.Offset are produced again, the disk's read from
// open at the disk byte cp.Offset falls on, and those before from are
// hashed without being handed out. The layer's digest is recorded when the
// stream ends cleanly, as with Compressed. A Checkpoint that is not one of
// a stream of this layer's length at its Offset is refused.
func (l *Layer) OpenFrom(cp Checkpoint, from int64, open func(diskOffset int64) (io.ReadCloser, error)) (io.ReadCloser, error) {
	h := int64(len(l.header))
	total := h + l.size + padding(l.size) + trailerSize
	if cp.Offset < 0 || cp.Offset > from || from > total {
		return nil, fmt.Errorf("resuming the layer at byte %d from a checkpoint at %d: want 0 <= checkpoint <= byte <= %d", from, cp.Offset, total)
	}
	st := start{at: cp, skip: from - cp.Offset}
	var err error
	if st.layer, err = hashstate.Restore(cp.Layer, cp.Offset); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCheckpoint, err)
	}
	if l.onContent != nil {
		if st.disk, err = hashstate.Restore(cp.Disk, min(max(cp.Offset-h, 0), l.size)); err != nil {
			return nil, fmt.Errorf("%w: the disk's digest: %w", ErrCheckpoint, err)
		}
	}
	l.mu.Lock()
	l.first, l.opened = nil, true // the reader given to New is not read
	l.mu.Unlock()
	src := io.ReadCloser(io.NopCloser(bytes.NewReader(nil)))
	if cp.Offset < h+l.size {
		if src, err = open(min(max(cp.Offset-h, 0), l.size)); err != nil {
			return nil, fmt.Errorf("re-opening disk source: %w", err)
		}
	}
	return newReader(l, src, st), nil
}

// finish records the digest and size computed by a reader that reached a
// clean end.
func (l *Layer) finish(digest v1.Hash, size int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.digest, l.tarSize, l.complete = digest, size, true
}

// DigestOf is the digest of the layer New makes of the size bytes of disk
// with opts, reading disk once: what an import of that disk pushes.
func DigestOf(disk io.Reader, size int64, opts ...Option) (v1.Hash, error) {
	l, err := New(io.NopCloser(disk), size, opts...)
	if err != nil {
		return v1.Hash{}, err
	}
	rc, err := l.Compressed()
	if err != nil {
		return v1.Hash{}, err
	}
	defer rc.Close()
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return v1.Hash{}, err
	}
	return l.Digest()
}
