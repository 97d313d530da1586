// Package blob finds the disk of a containerDisk image in a registry and
// reads it through the fetch engine: the manifests are read with
// bounded reads (MaxManifestSize) and checked against their digests, the
// layer blob is read with bounded Range requests
// on several connections (following the registry's redirect to an object
// store, with the registry's credentials kept to the registry).
//
// The disk is the regular file under disk/ (or ./disk/), as KubeVirt and
// CDI find it, and its bytes are those tar -x gives (the holes of a GNU
// sparse file read as zeros). In an uncompressed layer the disk is a byte
// range of the blob (or, when sparse, its data segments), read alone; a
// gzip or zstd layer is read whole and decompressed.
package blob

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"path"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/diskimporter/diskimporter/importer/decompress"
	"github.com/diskimporter/diskimporter/importer/detect"
	"github.com/diskimporter/diskimporter/importer/fetch"
)

// Errors a caller may want to tell apart.
var (
	// ErrNoDisk: the image holds no regular file under disk/.
	ErrNoDisk = errors.New("no disk in the image")
	// ErrPlatform: an image index has no image for the platform.
	ErrPlatform = errors.New("no image for the platform")
	// ErrLayer: the layer's media type is not one diskimporter reads.
	ErrLayer = errors.New("unsupported layer")
	// ErrCorrupt: the image's bytes are not a valid containerDisk (a
	// malformed tar header or stream, a manifest over MaxManifestSize) or
	// not what their descriptor says (size, digest). Reading them again
	// gives the same bytes: it is final, never retried.
	ErrCorrupt error = corruptError{}
)

type corruptError struct{}

func (corruptError) Error() string { return "corrupt image" }

// Permanent says that a retry cannot help, for fetch.Transient.
func (corruptError) Permanent() bool { return true }

// Options say how to reach the registry.
type Options struct {
	// Keychain gives the credentials. Nil: anonymous.
	Keychain authn.Keychain
	// Transport is the base transport (TLS, proxies): credentials are
	// added above it, for the registry's host only.
	Transport http.RoundTripper
	// Platform picks the image of an index. Nil: linux/amd64.
	Platform *v1.Platform
	// Fetch says how blobs are read.
	Fetch fetch.Options
	// PlainHTTP reads the registry over plain http. False: https, on
	// loopback too.
	PlainHTTP bool
}

// Disk is the disk of a containerDisk image.
type Disk struct {
	// Ref is the image, pinned by the digest of its manifest.
	Ref name.Digest
	// Manifest is the image's manifest.
	Manifest *v1.Manifest
	// Layer is the descriptor of the layer holding the disk.
	Layer v1.Descriptor
	// Path is the disk's path in the layer, such as disk/disk.img.
	Path string
	// Size is the disk's length in bytes.
	Size int64
	// Offset is where the disk starts in the layer blob (the data of a
	// sparse file, its holes left out), or -1 when the layer is
	// compressed.
	Offset int64

	blob        *fetch.Object
	compression detect.Compression
	scheme      string     // of the registry's URLs: https, or http when allowed
	sparse      *sparseMap // the disk's segments, when it is a sparse file of an uncompressed layer
}

// Open resolves ref and finds its disk. Nothing of the disk is read yet,
// only the manifest and the tar headers before the disk.
func Open(ctx context.Context, ref name.Reference, o Options) (*Disk, error) {
	if o.Keychain == nil {
		o.Keychain = authn.NewMultiKeychain() // anonymous
	}
	platform := v1.Platform{OS: "linux", Architecture: "amd64"}
	if o.Platform != nil {
		platform = *o.Platform
	}
	auth, err := o.Keychain.Resolve(ref.Context())
	if err != nil {
		return nil, fmt.Errorf("credentials for %s: %w", ref.Context(), err)
	}
	base := o.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	rt, err := transport.NewWithContext(ctx, ref.Context().Registry, auth, base, []string{ref.Context().Scope(transport.PullScope)})
	if err != nil {
		return nil, fmt.Errorf("authenticating to %s: %w", ref.Context().Registry, err)
	}
	client := &http.Client{Transport: rt, CheckRedirect: fetch.CheckRedirect}
	scheme := "https"
	if o.PlainHTTP {
		scheme = "http"
	}
	r, err := Resolve(ctx, client, scheme, ref, platform)
	if err != nil {
		return nil, fmt.Errorf("resolving %s: %w", ref, err)
	}
	m := r.Manifest
	d := &Disk{Ref: ref.Context().Digest(r.Image().Descriptor.Digest.String()), Manifest: m, scheme: scheme}

	// The disk is in the last layer that holds one, as later layers
	// override earlier ones.
	for i := len(m.Layers) - 1; i >= 0; i-- {
		found, err := d.find(ctx, client, m.Layers[i], o.Fetch)
		if err != nil || found {
			return d, err
		}
	}
	return nil, fmt.Errorf("%w: %s has no regular file under disk/ in its %d layers", ErrNoDisk, d.Ref, len(m.Layers))
}

// find looks for the disk in layer l, and makes it d's when found.
func (d *Disk) find(ctx context.Context, client *http.Client, l v1.Descriptor, opts fetch.Options) (bool, error) {
	var c detect.Compression
	switch l.MediaType {
	case types.OCIUncompressedLayer, types.DockerUncompressedLayer, types.OCIUncompressedRestrictedLayer:
		c = detect.None
	case types.OCILayer, types.DockerLayer, types.OCIRestrictedLayer:
		c = detect.Gzip
	case types.OCILayerZStd:
		c = detect.Zstd
	default:
		return false, fmt.Errorf("%w: layer %s has media type %s", ErrLayer, l.Digest, l.MediaType)
	}
	// https unless Options.PlainHTTP: go-containerregistry's Scheme()
	// would say http for loopback and private addresses.
	u := fmt.Sprintf("%s://%s/v2/%s/blobs/%s", d.scheme, d.Ref.Context().RegistryStr(), d.Ref.Context().RepositoryStr(), l.Digest)
	display := d.Ref.Context().String() + "@" + l.Digest.String()
	opts.Immutable = true     // the digest is checked by whoever reads it
	opts.ProbeSize = 64 << 10 // the tar headers are at the start
	obj, resp, err := fetch.Open(ctx, client, u, display, nil, opts)
	if err != nil {
		return false, fmt.Errorf("reading layer %s: %w", display, err)
	}
	if obj.Size() >= 0 && obj.Size() != l.Size {
		resp.Body.Close()
		return false, fmt.Errorf("%w: %w: layer %s is %d bytes, its descriptor says %d", ErrCorrupt, ErrDigest, display, obj.Size(), l.Size)
	}
	blob := obj.Stream(ctx, resp) // the headers are at the start
	defer blob.Close()
	e, err := locate(blob, c)
	if err != nil || e == nil {
		if err != nil {
			err = fmt.Errorf("layer %s: %w", display, err)
		}
		return false, err
	}
	d.Layer, d.Path, d.Size, d.Offset = l, e.path, e.size, e.offset
	d.blob, d.compression, d.sparse = obj, c, e.sparse
	if end := d.dataEnd(); c == detect.None && end > l.Size {
		return false, fmt.Errorf("%w: layer %s: %s ends at byte %d, past the layer's %d", ErrCorrupt, display, d.Path, end, l.Size)
	}
	return true, nil
}

// entry is where the disk is in a layer.
type entry struct {
	path string
	size int64 // the disk's size, holes included
	// offset is where its data starts in an uncompressed layer, -1 in a
	// compressed one.
	offset int64
	// sparse maps a sparse disk's data in an uncompressed layer; nil for
	// a dense disk or a compressed layer.
	sparse *sparseMap
}

// locate reads the tar headers of a layer of compression c from r up to
// the disk, the regular file under disk/, and says where it is; nil when
// the layer holds none.
func locate(r io.Reader, c detect.Compression) (*entry, error) {
	// Count the bytes before the disk and keep each entry's headers, for
	// the map of a sparse disk.
	src := &tarSource{r: r, record: c == detect.None}
	stream := io.Reader(src)
	if c != detect.None {
		dec, err := decompress.NewReader(c, src)
		if err != nil {
			return nil, src.corrupt(err)
		}
		defer dec.Close()
		stream = dec
	}
	tr := tar.NewReader(stream)
	for next := int64(0); ; {
		src.startEntry(next)
		h, err := tr.Next()
		if err == io.EOF {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading its tar headers: %w", src.corrupt(err))
		}
		var sp *sparseMap
		if c == detect.None && isSparse(h) {
			if sp, err = parseSparse(h, src.buf, src.over, next, src.n); err != nil {
				return nil, err
			}
		}
		if !isFile(h) || !isDisk(h.Name) {
			next = nextHeader(h, sp, src.n)
			continue
		}
		e := &entry{path: path.Clean(h.Name), size: h.Size, offset: -1, sparse: sp}
		if c == detect.None {
			e.offset = src.n // the tar reader reads headers block by block
		}
		return e, nil
	}
}

// isDisk tells whether a tar entry name is a file under disk/.
func isDisk(name string) bool {
	name = strings.TrimPrefix(name, "./")
	dir, file := path.Split(name)
	return dir == "disk/" && file != ""
}

// Compressed tells whether the disk's layer is compressed.
func (d *Disk) Compressed() bool { return d.Offset < 0 }

// Reader returns the disk's bytes in order, and checks the layer blob
// against its descriptor's digest and size: the error that ends the disk
// is ErrDigest (an ErrCorrupt) rather than io.EOF when they differ, and
// ErrCorrupt when the layer is no valid tar (or gzip, zstd) stream. In an uncompressed
// layer it reads the disk's byte range of the blob on its own (in
// parallel pieces), and the few bytes before and after it for the digest;
// a compressed layer, or one from a server that does not answer Range
// requests, is read whole (and decompressed).
func (d *Disk) Reader(ctx context.Context) (io.ReadCloser, error) {
	h := sha256.New()
	if d.Offset >= 0 && d.blob.Ranged() {
		if err := d.hashHead(ctx, h); err != nil {
			return nil, err
		}
		return d.section(ctx, 0, h)
	}

	// A compressed layer, or a server that does not answer Range
	// requests: the blob is read whole.
	blob := d.blob.NewReader(ctx, nil)
	src := &tarSource{r: io.TeeReader(blob, h)}
	stream, closeAll := io.Reader(src), blob.Close
	if d.compression != detect.None {
		dec, err := decompress.NewReader(d.compression, src)
		if err != nil {
			blob.Close()
			return nil, src.corrupt(err)
		}
		stream, closeAll = dec, func() error { dec.Close(); return blob.Close() }
	}
	tr := tar.NewReader(stream)
	for {
		hdr, err := tr.Next()
		if err != nil {
			closeAll()
			if err == io.EOF {
				err = fmt.Errorf("%w: %s is no longer in layer %s", ErrNoDisk, d.Path, d.Layer.Digest)
			}
			return nil, src.corrupt(err)
		}
		if isFile(hdr) && path.Clean(hdr.Name) == d.Path {
			return &diskReader{r: fetch.Borrow(corruptReader{tr, src}), left: d.Size, close: closeAll, finish: func() error {
				if _, err := io.Copy(io.Discard, src); err != nil { // the rest of the blob, for its digest
					return err
				}
				return d.check(h, src.n)
			}}, nil
		}
	}
}

// corruptReader marks the errors of a tar reader over src that are not
// src's own with ErrCorrupt.
type corruptReader struct {
	r   io.Reader
	src *tarSource
}

func (c corruptReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err != nil {
		err = c.src.corrupt(err)
	}
	return n, err
}

// hashHead hashes the bytes of the blob before the disk of an uncompressed
// layer into h.
func (d *Disk) hashHead(ctx context.Context, h hash.Hash) error {
	head, err := d.blob.NewSectionReader(ctx, 0, d.Offset)
	if err != nil {
		return err
	}
	defer head.Close()
	if _, err := io.Copy(h, head); err != nil {
		return fmt.Errorf("layer %s: %w", d.Layer.Digest, err)
	}
	return nil
}

// section reads the disk of an uncompressed layer from disk byte done on,
// hashing the blob from where that byte is stored into h, which holds the
// blob's bytes before it; at the disk's end it hashes the rest of the blob
// and checks the digest. A sparse disk's data is read as one range and its
// holes filled in.
func (d *Disk) section(ctx context.Context, done int64, h hash.Hash) (*diskReader, error) {
	from, tailAt := d.blobAt(done), d.dataEnd()
	body, err := d.blob.NewSectionReader(ctx, from, tailAt-from)
	if err != nil {
		return nil, err
	}
	r := fetch.Nexter(hashed{r: fetch.Borrow(body), h: h})
	if d.sparse != nil {
		r = fetch.Borrow(&sparseReader{m: d.sparse, r: r, pos: done, i: d.sparse.first(done)})
	}
	return &diskReader{r: r, left: d.Size - done, close: body.Close, finish: func() error {
		tail, err := d.blob.NewSectionReader(ctx, tailAt, d.blob.Size()-tailAt)
		if err != nil {
			return err
		}
		defer tail.Close()
		if _, err := io.Copy(h, tail); err != nil {
			return err
		}
		return d.check(h, d.blob.Size())
	}}, nil
}

// blobAt is where in the blob of an uncompressed layer disk byte pos (or
// the first byte of data from there on, when sparse) is.
func (d *Disk) blobAt(pos int64) int64 {
	if d.sparse != nil {
		return d.Offset + d.sparse.physAt(pos)
	}
	return d.Offset + pos
}

// dataEnd is where the disk's bytes in the blob of an uncompressed layer
// end.
func (d *Disk) dataEnd() int64 {
	if d.sparse != nil {
		return d.Offset + d.sparse.physLen
	}
	return d.Offset + d.Size
}

// ErrDigest: the layer blob is not what its descriptor says (its digest
// or size). Its errors are ErrCorrupt too.
var ErrDigest = errors.New("layer blob does not match its digest")

// check compares the blob's sha256 and size with the layer descriptor.
func (d *Disk) check(h hash.Hash, size int64) error {
	got := fmt.Sprintf("sha256:%x", h.Sum(nil))
	if got != d.Layer.Digest.String() || size != d.Layer.Size {
		return fmt.Errorf("%w: %w: read %d bytes with digest %s, the manifest says %d bytes, %s",
			ErrCorrupt, ErrDigest, size, got, d.Layer.Size, d.Layer.Digest)
	}
	return nil
}

// diskReader gives the disk's left bytes from r, then runs finish (the
// digest check) before it says io.EOF. It hands them out without a copy
// (Next) when r does.
type diskReader struct {
	r      fetch.Nexter
	left   int64
	close  func() error
	finish func() error
	done   bool
	err    error
}

func (d *diskReader) Read(p []byte) (int, error) {
	if d.left == 0 {
		return 0, d.end()
	}
	if int64(len(p)) > d.left {
		p = p[:d.left]
	}
	n, err := d.r.Read(p)
	d.left -= int64(n)
	return n, d.check(err)
}

// Next is Read without a copy, from r's own buffers.
func (d *diskReader) Next(n int) ([]byte, error) {
	if d.left == 0 {
		return nil, d.end()
	}
	b, err := d.r.Next(int(min(int64(n), d.left)))
	d.left -= int64(len(b))
	return b, d.check(err)
}

// check turns the io.EOF of r into io.ErrUnexpectedEOF before the disk's
// last byte, and into nil at it: finish runs on the next call.
func (d *diskReader) check(err error) error {
	if err == io.EOF && d.left > 0 {
		return io.ErrUnexpectedEOF
	} else if err == io.EOF {
		return nil
	}
	return err
}

// end runs finish once, and returns io.EOF when it passed.
func (d *diskReader) end() error {
	if !d.done {
		d.done, d.err = true, d.finish()
		if d.err == nil {
			d.err = io.EOF
		}
	}
	return d.err
}

// hashed hands on r's bytes, each written to h before it is handed on.
type hashed struct {
	r fetch.Nexter
	h hash.Hash
}

func (t hashed) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	t.h.Write(p[:n])
	return n, err
}

func (t hashed) Next(n int) ([]byte, error) {
	b, err := t.r.Next(n)
	t.h.Write(b)
	return b, err
}

func (d *diskReader) Close() error { return d.close() }

// ReaderAt returns random access to the disk, or nil when its layer is
// compressed.
func (d *Disk) ReaderAt(ctx context.Context) io.ReaderAt {
	if d.Offset < 0 || !d.blob.Ranged() {
		return nil
	}
	if d.sparse != nil {
		return sparseReaderAt{m: d.sparse, ra: d.blob.ReaderAt(ctx), base: d.Offset}
	}
	return io.NewSectionReader(d.blob.ReaderAt(ctx), d.Offset, d.Size)
}
