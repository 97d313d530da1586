package importer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/diskimporter/diskimporter/importer/decompress"
	"github.com/diskimporter/diskimporter/importer/detect"
	"github.com/diskimporter/diskimporter/importer/fetch"
	"github.com/diskimporter/diskimporter/importer/qcow2"
	"github.com/diskimporter/diskimporter/importer/reason"
)

// InspectOptions say where the source Inspect looks at is and how to reach
// it: the source fields of Options, with the same meaning and defaults.
type InspectOptions struct {
	// SourceOptions say where the source is and how it is reached. Of
	// ReadOptions only Retries, StallTimeout, RetryWait and OnRetry are
	// used: an inspection reads bounded pieces of its own size.
	SourceOptions
	// Logger receives retries of the source. Nil: slog.Default().
	Logger *slog.Logger
}

// Info is what Inspect learned about a source: what an import of it would
// find, and how it would go about it.
type Info struct {
	// Source is the source with credentials and query string removed.
	Source string `json:"source"`
	// Kind is "http" (http or https), "file" or "docker".
	Kind string `json:"kind"`
	// Compression is the compression container: none, gzip, xz, zstd or
	// bzip2.
	Compression string `json:"compression"`
	// XZParallel, for an xz source, tells whether its blocks are decoded
	// on every CPU the import has (their headers state their sizes, as
	// xz -T0 writes them) or one after the other (single-threaded xz).
	XZParallel *bool `json:"xz_parallel,omitempty"`
	// Format is the disk format after decompression: raw, qcow2, iso, or
	// one an import refuses (vmdk, vhd, vhdx, vdi). Empty when it could
	// not be told: a nested compression, a corrupt compressed stream.
	Format string `json:"format,omitempty"`
	// SizeAsDownloaded is the source's length in bytes, -1 when it does not
	// say (an http response without a length).
	SizeAsDownloaded int64 `json:"size_as_downloaded"`
	// DiskSize is the disk's size after decompression when it can be told
	// without reading the whole source, otherwise -1 (an import spools).
	DiskSize int64 `json:"disk_size"`
	// SizeFrom is how an import would learn the disk's size before its
	// bytes: content-length, xz-index, zstd-header or spool.
	SizeFrom string `json:"size_from"`
	// VirtualSize is the size of the disk the guest sees: a qcow2's
	// virtual size, otherwise DiskSize; -1 when unknown.
	VirtualSize int64 `json:"virtual_size"`
	// QCOW2 is what a qcow2 header says, when it passed the checks of an
	// import.
	QCOW2 *QCOW2Info `json:"qcow2,omitempty"`
	// BackingFileNamed: the qcow2 header names a backing file, which an
	// import refuses. BackingFile is its name, when it lies within the
	// first 64 KiB (cut to 256 bytes): the image's bytes, unchecked.
	BackingFileNamed bool   `json:"backing_file_named,omitempty"`
	BackingFile      string `json:"backing_file,omitempty"`
	// ConvertRaw is how --convert raw would read a qcow2 (its size then
	// comes from the qcow2 header): "random-access" through Range
	// requests or the file, or "spool" when the source is compressed or
	// cannot be read at random.
	ConvertRaw string `json:"convert_raw,omitempty"`
	// ImportRefuses is why an import with default settings would fail,
	// empty when it would go ahead; RefuseReason is the reason an import
	// would report, such as BackingFileRejected.
	ImportRefuses string        `json:"import_refuses,omitempty"`
	RefuseReason  reason.Reason `json:"refuse_reason,omitempty"`
	// RangeRequests tells whether the server answered a Range request; nil
	// for a file, and for a docker:// disk in a compressed layer.
	RangeRequests *bool `json:"range_requests,omitempty"`
	// ETag and LastModified are the validators of an http(s) source.
	ETag         string `json:"etag,omitempty"`
	LastModified string `json:"last_modified,omitempty"`
	// Redirected: the first request of an http(s) source was redirected.
	Redirected bool `json:"redirected,omitempty"`
	// Docker describes a docker:// source.
	Docker *DockerInfo `json:"docker,omitempty"`
	// BytesRead is how many bytes Inspect read: of the file, or of the
	// response bodies (for docker:// the manifest and tar headers too).
	BytesRead int64 `json:"bytes_read"`
}

// DockerInfo describes the disk of a docker:// source.
type DockerInfo struct {
	// Reference is the image pinned by the digest of its manifest.
	Reference string `json:"reference"`
	// Digest is the manifest's digest.
	Digest string `json:"digest"`
	// Layer, LayerMediaType and LayerSize describe the layer holding the
	// disk.
	Layer          string `json:"layer"`
	LayerMediaType string `json:"layer_media_type"`
	LayerSize      int64  `json:"layer_size"`
	// DiskPath is the disk's path in the layer, such as disk/disk.img.
	DiskPath string `json:"disk_path"`
	// DiskOffset is where the disk starts in the layer blob, -1 in a
	// compressed layer.
	DiskOffset int64 `json:"disk_offset"`
}

// Kinds of source, for Info.Kind.
const (
	KindHTTP   = "http"
	KindFile   = "file"
	KindDocker = "docker"
)

// How --convert raw would read a qcow2, for Info.ConvertRaw.
const (
	ConvertRandomAccess = "random-access"
	ConvertSpool        = "spool"
)

const (
	// inspectChunk is the length of the first GET (a bounded Range
	// request: the head only) and of each later read.
	inspectChunk = 64 << 10
	// inspectMaxInput is how many bytes of a compressed source a decoder
	// may read to give the disk's first headSize bytes: a bzip2 block
	// is up to 900 kB, an xz or zstd one of incompressible data a bit more
	// than what it holds.
	inspectMaxInput = 4 << 20
	// inspectRetries and inspectStallTimeout are smaller than an
	// import's: inspect reads little and should answer soon.
	inspectRetries      = 2
	inspectStallTimeout = 30 * time.Second
	// defaultMaxSize is Options.MaxSize's (and MaxVirtualSize's) default.
	defaultMaxSize = 2 << 40
)

// Inspect tells what an import of o.Source would find, without importing
// anything and reading as few bytes as it can: the head of the source (one
// bounded Range request of 64 KiB for an http(s) source that answers
// them, the first 64 KiB of a response that does not), as much more as a
// decoder needs to give the disk's head, and for xz the index at the end
// of the file (one more Range request).
//
// A source Inspect could read is an answer, even when an import would
// refuse it: Info.ImportRefuses says why (a backing file, a format
// diskimporter does not import, a corrupt header). An error means the
// source could not be read: it wraps the same errors as Run's
// (ErrSourceNotFound, ErrSourceUnauthorized, ErrSourceUnavailable, ...),
// and Reason classifies it.
func Inspect(ctx context.Context, o InspectOptions) (*Info, error) {
	s, err := o.settings()
	if err != nil {
		return nil, err
	}
	var read atomic.Int64
	in, err := openInspected(ctx, s, &read)
	if err != nil {
		return nil, err
	}
	defer in.head.close()
	refusal, err := inspectDisk(ctx, in)
	if err != nil {
		return nil, err
	}
	info := in.info
	if refusal != nil {
		info.ImportRefuses, info.RefuseReason = refusal.Error(), reason.Of(refusal)
	}
	info.BytesRead = read.Load()
	return info, nil
}

// settings are the Options of an import of the same source, with the
// defaults and checks of Options.settings that concern the source.
func (o InspectOptions) settings() (*settings, error) {
	s := &settings{Options: Options{SourceOptions: o.SourceOptions, Logger: o.Logger}}
	// Two connections make the first GET a bounded Range request of the
	// head (fetch.Open); every later read is a ReadAt of at most
	// inspectChunk bytes, one bounded request.
	s.Connections, s.ChunkSize = 2, inspectChunk
	if s.Retries == 0 {
		s.Retries = inspectRetries
	}
	if s.StallTimeout == 0 {
		s.StallTimeout = inspectStallTimeout
	}
	if err := s.checkSource(2, inspectChunk); err != nil {
		return nil, err
	}
	return s, nil
}

// inspected is a source opened for Inspect.
type inspected struct {
	// src has what knownSize needs: the display name, the size, and
	// random access (counted) when an import would have it.
	src  *source
	head *headReader
	info *Info
}

// openInspected opens s.Source as openSource does, but reads nothing past
// the first bounded response: the head comes from headReader, on demand.
// read counts the bytes read.
func openInspected(ctx context.Context, s *settings, read *atomic.Int64) (*inspected, error) {
	u, err := url.Parse(s.Source)
	if err != nil || u.Scheme == "" || len(u.Scheme) == 1 { // "C:" is a path
		return inspectFile(ctx, s.Source, read)
	}
	switch u.Scheme {
	case "file":
		return inspectFile(ctx, u.Path, read)
	case "http", "https":
		return inspectHTTP(ctx, s, u, read)
	case "docker":
		return inspectRegistry(ctx, s, strings.TrimPrefix(s.Source, "docker://"), read)
	}
	return nil, fmt.Errorf("%w: source scheme %q: use http://, https://, file://, docker:// or a path", ErrInvalidOptions, u.Scheme)
}

func inspectFile(ctx context.Context, path string, read *atomic.Int64) (*inspected, error) {
	src, f, err := openFileContext(ctx, path)
	if err != nil {
		return nil, err
	}
	if ra := src.readerAt; ra != nil {
		src.readerAt = func(ctx context.Context) io.ReaderAt { return countingReaderAt{ra(ctx), read} }
	}
	return &inspected{
		src:  src,
		head: &headReader{body: countingReadCloser{f, read}, size: src.size},
		info: &Info{Source: src.display, Kind: KindFile},
	}, nil
}

func inspectHTTP(ctx context.Context, s *settings, u *url.URL, read *atomic.Int64) (*inspected, error) {
	client, err := sourceClient(s)
	if err != nil {
		return nil, err
	}
	client.Transport = countingTransport{client.Transport, read}
	display := Redact(u.String())
	obj, resp, err := fetch.Open(ctx, client, u.String(), display, s.SourceHeaders, s.fetchOptions(display))
	if err != nil {
		return nil, ClassifySource(display, err)
	}
	src := &source{display: display, size: obj.Size()}
	// The first response is the head (206) or the whole object (200):
	// read on demand, it is closed after the last byte inspect needs.
	h := &headReader{body: sourceReader{resp.Body, display}, size: obj.Size()}
	if obj.Ranged() && obj.Size() > 0 {
		ra := sourceReaderAt{obj.ReaderAt(ctx), display}
		src.readerAt = func(context.Context) io.ReaderAt { return ra }
		h.ra = ra
	}
	ranged := obj.Ranged()
	return &inspected{src: src, head: h, info: &Info{
		Source:        display,
		Kind:          KindHTTP,
		RangeRequests: &ranged,
		ETag:          resp.Header.Get("ETag"),
		LastModified:  resp.Header.Get("Last-Modified"),
		Redirected:    obj.Redirected(),
	}}, nil
}

func inspectRegistry(ctx context.Context, s *settings, ref string, read *atomic.Int64) (*inspected, error) {
	d, display, err := openImage(ctx, s, ref, func(t http.RoundTripper) http.RoundTripper { return countingTransport{t, read} })
	if err != nil {
		return nil, err
	}
	in := &inspected{
		src:  &source{display: display, size: d.Size, digest: d.Ref.DigestStr()},
		head: &headReader{size: d.Size},
		info: &Info{Source: display, Kind: KindDocker, Docker: &DockerInfo{
			Reference:      d.Ref.String(),
			Digest:         d.Ref.DigestStr(),
			Layer:          d.Layer.Digest.String(),
			LayerMediaType: string(d.Layer.MediaType),
			LayerSize:      d.Layer.Size,
			DiskPath:       d.Path,
			DiskOffset:     d.Offset,
		}},
	}
	if ra := d.ReaderAt(ctx); ra != nil {
		ra := sourceReaderAt{ra, display}
		in.src.readerAt = func(context.Context) io.ReaderAt { return ra }
		in.head.ra = ra
		in.info.RangeRequests = new(true)
		return in, nil
	}
	if !d.Compressed() {
		in.info.RangeRequests = new(false)
	}
	// A compressed layer, or a registry that does not answer Range
	// requests: the disk is read in order from the blob's start, and
	// closed early.
	rc, err := d.Reader(ctx)
	if err != nil {
		return nil, ClassifySource(display, err)
	}
	in.head.body = sourceReader{rc, display}
	return in, nil
}

// inspectDisk fills in.info with what the head of the source says, as
// openDisk would learn it, and returns why an import would refuse the
// disk (the first reason it would fail on), or an error when the source
// could not be read.
func inspectDisk(ctx context.Context, in *inspected) (refusal error, err error) {
	src, info := in.src, in.info
	refuse := func(err error) {
		if refusal == nil {
			refusal = err
		}
	}
	info.SizeAsDownloaded, info.DiskSize, info.VirtualSize = src.size, -1, -1

	sourceHead, err := readHead(in.head, headSize)
	if err != nil {
		return nil, fmt.Errorf("%w: reading the first bytes of %s: %w", ErrSourceUnavailable, src.display, err)
	}
	c := detect.CompressionOf(sourceHead)
	info.Compression = string(c)
	if c == detect.XZ {
		if parallel, err := decompress.XZParallel(sourceHead); err == nil {
			info.XZParallel = &parallel
		}
	}
	head := sourceHead
	if c != detect.None {
		head, err = decodedHead(c, io.MultiReader(bytes.NewReader(sourceHead), in.head), src.display)
		if err != nil {
			if !refused(err) {
				return nil, err
			}
			refuse(err) // a corrupt stream: the disk's format is unknown
		}
	}

	format := detect.Format("")
	switch inner := detect.CompressionOf(head); {
	case head == nil:
	case c != detect.None && inner != detect.None:
		refuse(fmt.Errorf("%w: %s is %s inside %s; nested compression is refused, decompress it once first",
			ErrUnsupportedFormat, src.display, inner, c))
	default:
		format = detect.FormatOf(head)
		info.Format = string(format)
		if _, err := checkFormat(head, ""); err != nil {
			refuse(fmt.Errorf("%s: %w", src.display, err))
		}
	}

	size, sizeFrom, err := knownSize(ctx, src, c, sourceHead)
	if err != nil {
		return nil, err
	}
	// As an import with default settings and --convert raw would read it.
	plan, err := planRead(planInput{
		display: src.display, compression: c, format: format, size: size, sizeFrom: sizeFrom,
		maxSize: defaultMaxSize, convertRaw: true, randomAccess: src.readerAt != nil,
	})
	if err != nil {
		refuse(err)
	}
	if plan.sizeFrom == "" {
		size, sizeFrom = -1, SizeFromSpool
	}
	info.DiskSize, info.SizeFrom = size, sizeFrom
	if head != nil && len(head) == 0 {
		refuse(emptyError(src.display, ""))
	}
	switch format {
	case detect.Raw, detect.ISO:
		info.VirtualSize = size
	case detect.QCOW2:
		q, err := qcow2.Inspect(head, size, 0) // size is -1 when unknown
		if err != nil {
			refuse(fmt.Errorf("%s: %w", src.display, classifyQCOW2(err)))
			info.BackingFile, info.BackingFileNamed = qcow2.BackingFile(head)
			break
		}
		info.QCOW2 = &QCOW2Info{Version: q.Version, VirtualSize: q.VirtualSize, ClusterSize: q.ClusterSize, CompressionType: q.CompressionType}
		info.VirtualSize = int64(q.VirtualSize) // Inspect checked it fits
		info.ConvertRaw = plan.convert
		if q.VirtualSize > defaultMaxSize {
			refuse(fmt.Errorf("%w: %s: its virtual size is %d bytes, more than the default MaxVirtualSize %d",
				ErrTooLarge, src.display, q.VirtualSize, int64(defaultMaxSize)))
		}
	}
	return refusal, nil
}

// refused tells whether err is about the source's content, which an
// import would refuse, rather than a failure to read it.
func refused(err error) bool {
	switch reason.Of(err) {
	case reason.UnsupportedFormat, reason.CorruptSource, reason.BackingFileRejected, reason.TooLarge, reason.FormatMismatch:
		return true
	}
	return false
}

// decodedHead returns the first headSize bytes of the decompressed stream
// r (fewer when it is shorter), decoding as little of r as the decoder
// needs.
func decodedHead(c detect.Compression, r io.Reader, display string) ([]byte, error) {
	dec, err := decompress.NewReader(c, r)
	if err != nil {
		if errors.Is(err, errInspectLimit) {
			return nil, fmt.Errorf("%s: the first %d bytes of the %s stream do not start it; inspect reads no further", display, inspectMaxInput, c)
		}
		return nil, decodeError(display, err)
	}
	defer dec.Close()
	head, err := readHead(dec, headSize)
	switch {
	case err == nil:
		return head, nil
	case errors.Is(err, errInspectLimit) && len(head) > 0:
		return head, nil // what the decoder gave of the head: enough to tell a format
	case errors.Is(err, errInspectLimit):
		return nil, fmt.Errorf("%s: the first %d bytes of the %s stream decode to nothing; inspect reads no further", display, inspectMaxInput, c)
	}
	return nil, decodeError(display, err)
}

// readHead reads r until it has n bytes or r ends, and returns what it
// read; an error other than io.EOF is returned with the bytes read.
func readHead(r io.Reader, n int) ([]byte, error) {
	b := make([]byte, n)
	got := 0
	for got < n {
		m, err := r.Read(b[got:])
		got += m
		if err == io.EOF {
			break
		}
		if err != nil {
			return b[:got], err
		}
	}
	return b[:got], nil
}

// errInspectLimit ends a headReader that gave inspectMaxInput bytes.
var errInspectLimit = errors.New("inspect reads no more of the source")

// headReader reads a source in order from its first byte, as little as it
// is asked for: from body (the first response, a file, a disk reader)
// while it lasts, then with bounded reads of ra, at most inspectMaxInput
// bytes in all.
type headReader struct {
	body io.ReadCloser // nil once ended
	ra   io.ReaderAt   // random access once body ended; nil: the source ends with body
	off  int64
	size int64 // -1 when unknown
}

func (h *headReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if h.off >= inspectMaxInput {
		return 0, errInspectLimit
	}
	p = p[:min(int64(len(p)), inspectMaxInput-h.off)]
	if h.body != nil {
		n, err := h.body.Read(p)
		h.off += int64(n)
		if err == io.EOF {
			h.body.Close()
			h.body = nil
			if h.ra != nil && h.off < h.size {
				err = nil // a bounded first response: the rest through ra
			}
		}
		return n, err
	}
	if h.ra == nil || h.off >= h.size {
		return 0, io.EOF
	}
	n, err := h.ra.ReadAt(p[:min(int64(len(p)), inspectChunk, h.size-h.off)], h.off)
	h.off += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}

func (h *headReader) close() {
	if h.body != nil {
		h.body.Close()
		h.body = nil
	}
}

// countingTransport counts the bytes of response bodies read.
type countingTransport struct {
	next http.RoundTripper
	n    *atomic.Int64
}

func (t countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if resp != nil && resp.Body != nil {
		resp.Body = countingReadCloser{resp.Body, t.n}
	}
	return resp, err
}

type countingReadCloser struct {
	rc io.ReadCloser
	n  *atomic.Int64
}

func (c countingReadCloser) Read(p []byte) (int, error) {
	n, err := c.rc.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c countingReadCloser) Close() error { return c.rc.Close() }

type countingReaderAt struct {
	ra io.ReaderAt
	n  *atomic.Int64
}

func (c countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.ra.ReadAt(p, off)
	c.n.Add(int64(n))
	return n, err
}
