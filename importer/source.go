package importer

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/diskimporter/diskimporter/importer/detect"
	"github.com/diskimporter/diskimporter/importer/fetch"
)

// source is a disk image that can be opened from its first byte as often
// as an upload needs it.
type source struct {
	// display is the source with credentials removed, for logs, errors and
	// annotations.
	display string
	size    int64 // -1 when the source does not say
	// open reads the source again from byte off; one that cannot start
	// past its first byte answers errFromStart for off > 0.
	open func(ctx context.Context, off int64) (io.ReadCloser, error)
	// readerAt gives random access to the source bytes, or is nil when the
	// source has none (an HTTP server that does not answer Range requests).
	readerAt func(ctx context.Context) io.ReaderAt
	// digest is the manifest digest of a docker:// source.
	digest string
	// validator names the version of the source that is read (an ETag,
	// a layer digest, a file's identity and modification time), for a
	// later process to tell whether it reads the same; "" when it cannot
	// be told.
	validator string
}

// errFromStart: a source can be read again only from its first byte (it
// does not answer Range requests, or its bytes are checked as a whole).
var errFromStart = errors.New("the source can only be read from its first byte")

// openSource opens o.Source and returns the source and a reader of its
// bytes.
func openSource(ctx context.Context, o *settings) (*source, io.ReadCloser, error) {
	u, err := url.Parse(o.Source)
	if err != nil || u.Scheme == "" || len(u.Scheme) == 1 { // "C:" is a path
		return openFileContext(ctx, o.Source)
	}
	switch u.Scheme {
	case "file":
		return openFileContext(ctx, u.Path)
	case "http", "https":
		return openHTTP(ctx, o, u)
	case "docker":
		return openRegistry(ctx, o, strings.TrimPrefix(o.Source, "docker://"))
	}
	return nil, nil, fmt.Errorf("%w: source scheme %q: use http://, https://, file://, docker:// or a path", ErrInvalidOptions, u.Scheme)
}

// openFileContext opens the file, block device, FIFO or pipe at path.
// Seeking tells the size of files and block devices; a pipe has none and
// is spooled. A character device (/dev/zero, /dev/null, a terminal) is
// refused: its size reads as 0 whatever it holds.
func openFileContext(ctx context.Context, path string) (*source, io.ReadCloser, error) {
	// O_NONBLOCK: opening a FIFO would otherwise wait for a writer,
	// whatever ctx says. It changes nothing for a file or a block device.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, openError(err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%w: %w", ErrSourceUnavailable, err)
	}
	switch mode := fi.Mode(); {
	case mode.IsDir():
		f.Close()
		return nil, nil, fmt.Errorf("%w: source %s is a directory; give the disk image file", ErrInvalidOptions, path)
	case mode&fs.ModeCharDevice != 0:
		f.Close()
		return nil, nil, fmt.Errorf("%w: source %s is a character device; give a disk image file, a block device or a pipe", ErrInvalidOptions, path)
	case mode&fs.ModeNamedPipe != 0:
		return openPipe(ctx, path, f)
	}
	if err := blocking(f); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%w: %w", ErrSourceUnavailable, err)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		size = -1
	}
	version := ""
	if fi.Mode().IsRegular() {
		version = fileVersion(fi)
	}
	src := &source{
		display:   path,
		size:      size,
		validator: version,
		open: func(_ context.Context, off int64) (io.ReadCloser, error) {
			f, err := os.Open(path)
			if err != nil {
				return nil, err
			}
			if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() && fileVersion(fi) != version {
				f.Close()
				return nil, fmt.Errorf("%w: %s was %s and is now %s", ErrSourceChanged, path, version, fileVersion(fi))
			}
			if _, err := f.Seek(off, io.SeekStart); err != nil {
				f.Close()
				return nil, fmt.Errorf("%w: %w", ErrSourceUnavailable, err)
			}
			return f, nil
		},
	}
	if size >= 0 {
		src.readerAt = func(context.Context) io.ReaderAt { return f }
	}
	return src, f, nil
}

// fileVersion names the version of a regular file: its device, inode,
// size and modification time. A file rewritten in place, or replaced, has
// another.
func fileVersion(fi fs.FileInfo) string {
	v := fmt.Sprintf("%d bytes, modified %s", fi.Size(), fi.ModTime().UTC().Format(time.RFC3339Nano))
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		v = fmt.Sprintf("inode %d:%d, %s", st.Dev, st.Ino, v)
	}
	return v
}

// blocking clears the O_NONBLOCK f was opened with.
func blocking(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.SetNonblock(int(fd), false) }); err != nil {
		return err
	}
	return serr
}

// openError classifies a failure to open a local source.
func openError(err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w: %w", ErrSourceNotFound, err)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%w: %w", ErrSourceUnauthorized, err)
	}
	return fmt.Errorf("%w: %w", ErrSourceUnavailable, err)
}

// openPipe makes a source of f, the FIFO (or the pipe, through
// /proc/self/fd or /dev/stdin) at path opened with O_NONBLOCK, once a
// writer has sent its first byte or come and gone. It has no size, is read
// once, and is spooled.
func openPipe(ctx context.Context, path string, f *os.File) (*source, io.ReadCloser, error) {
	if err := waitWriter(ctx, f); err != nil {
		f.Close()
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("import cancelled while waiting for a writer to open %s: %w", path, context.Cause(ctx))
		}
		return nil, nil, fmt.Errorf("%w: waiting for a writer to open %s: %w", ErrSourceUnavailable, path, err)
	}
	src := &source{
		display: path,
		size:    -1,
		open: func(context.Context, int64) (io.ReadCloser, error) {
			return nil, fmt.Errorf("%w: %s is a pipe: it cannot be read a second time", ErrSourceUnavailable, path)
		},
	}
	return src, newPipeReader(ctx, f), nil
}

// waitWriter waits until the FIFO f, opened with O_NONBLOCK, has a byte
// to read or had a writer that came and went (its end), or until ctx ends.
// A blocking open(2) would wait for the writer whatever ctx says, and a
// read(2) before a writer came would take its absence for the end: the
// runtime poller waits instead, under a read deadline that ctx moves to
// the past.
func waitWriter(ctx context.Context, f *os.File) error {
	stop := context.AfterFunc(ctx, func() { f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	// The poller reports only what happens after the wait begins: what
	// happened before is asked of poll(2) first.
	return rc.Read(readable)
}

// readable tells, without waiting, whether a read of the descriptor fd
// would not block: it holds a byte, or its writer came and went.
func readable(fd uintptr) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0) // a zero timeout: do not wait
		if err != unix.EINTR {
			// On another error, a read tells what is wrong.
			return err != nil || n > 0
		}
	}
}

// pipeReader reads a FIFO or a pipe opened with O_NONBLOCK, which puts it
// in the runtime poller: a cancelled ctx ends a read in progress (a writer that went
// idle) by moving the read deadline to the past.
type pipeReader struct {
	f    *os.File
	ctx  context.Context
	stop func() bool
}

func newPipeReader(ctx context.Context, f *os.File) *pipeReader {
	return &pipeReader{f: f, ctx: ctx, stop: context.AfterFunc(ctx, func() {
		f.SetReadDeadline(time.Unix(1, 0))
	})}
}

func (r *pipeReader) Read(p []byte) (int, error) {
	n, err := r.f.Read(p)
	if err != nil && r.ctx.Err() != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("reading %s: %w", r.f.Name(), context.Cause(r.ctx))
	}
	return n, err
}

func (r *pipeReader) Close() error {
	r.stop()
	return r.f.Close()
}

func openHTTP(ctx context.Context, o *settings, u *url.URL) (*source, io.ReadCloser, error) {
	client, err := sourceClient(o)
	if err != nil {
		return nil, nil, err
	}
	display := Redact(u.String())
	opts := o.fetchOptions(display)
	// With more than one connection, the first GET asks for the first
	// piece only: a 206 says the rest can be read in parallel pieces.
	obj, resp, err := fetch.Open(ctx, client, u.String(), display, o.SourceHeaders, opts)
	if err != nil {
		return nil, nil, ClassifySource(display, err)
	}
	src := &source{
		display:   display,
		size:      obj.Size(),
		validator: obj.Validator(),
		open: func(ctx context.Context, off int64) (io.ReadCloser, error) {
			if off == 0 {
				return sourceReader{obj.NewReader(ctx, nil), display}, nil
			}
			if !obj.Resumable() {
				return nil, errFromStart
			}
			rc, err := obj.NewSectionReader(ctx, off, obj.Size()-off)
			if err != nil {
				return nil, ClassifySource(display, err)
			}
			return sourceReader{rc, display}, nil
		},
	}
	if resp != nil && !o.chunkSizeGiven && detect.CompressionOf(peekBody(resp, compressionMagic)) != detect.None {
		obj.LimitChunkSize(CompressedChunkSize)
	}
	if obj.Ranged() && obj.Size() > 0 {
		src.readerAt = func(ctx context.Context) io.ReaderAt {
			return sourceReaderAt{obj.ReaderAt(ctx), display}
		}
	}
	return src, sourceReader{obj.NewReader(ctx, resp), display}, nil
}

// compressionMagic is how many bytes detect.CompressionOf needs.
const compressionMagic = 6

// peekBody returns the first n bytes of resp's body (fewer when it ends
// or fails first) and leaves the body as it was: those bytes, then the
// rest, or the error that stopped the peek.
func peekBody(resp *http.Response, n int) []byte {
	br := bufio.NewReaderSize(resp.Body, n)
	head, _ := peek(br, n) // an error is br's next after head
	resp.Body = readCloser{br, resp.Body}
	return head
}

// sourceReader classifies the read errors of a source (ClassifySource).
type sourceReader struct {
	rc      io.ReadCloser
	display string
}

func (r sourceReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	return n, ClassifySource(r.display, err)
}

func (r sourceReader) Close() error { return r.rc.Close() }

// sourceReaderAt classifies the read errors of random access to a source.
type sourceReaderAt struct {
	ra      io.ReaderAt
	display string
}

func (r sourceReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := r.ra.ReadAt(p, off)
	return n, ClassifySource(r.display, err)
}

// sourceClient returns the HTTP client for the source: its own TLS settings
// (not pinned: the source is read, not written, and the CPU cost is on the
// server's side of the cipher choice just as much), proxies from the
// environment, HTTP/1.1 so that parallel Range requests get a TCP
// connection each (HTTP/2 would put them all on one), and no overall
// timeout, since a disk download takes as long as it takes: a stalled
// response is caught by the stall timeout instead.
func sourceClient(o *settings) (*http.Client, error) {
	t, err := sourceTransport(o)
	if err != nil {
		return nil, err
	}
	return &http.Client{
		Transport:     t,
		CheckRedirect: fetch.CheckRedirect,
	}, nil
}

// sourceTransport is the transport of sourceClient.
func sourceTransport(o *settings) (*http.Transport, error) {
	return SourceTransport(o.SourceCAFile, o.SourceInsecureSkipVerify, o.Connections)
}

// SourceTransport is the transport diskimporter reads sources and registry
// blobs with: TLS 1.2 or later, trusting the PEM bundle caFile besides the
// system roots (none when empty), or no certificate at all with
// insecureSkipVerify; HTTP/1.1 with room for connections idle connections;
// proxies from the environment; bodies asked for as stored.
func SourceTransport(caFile string, insecureSkipVerify bool, connections int) (*http.Transport, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: insecureSkipVerify}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("%w: source CA file: %w", ErrInvalidOptions, err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: no PEM certificate in source CA file %s", ErrInvalidOptions, caFile)
		}
		tc.RootCAs = pool
	}
	t := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tc,
		TLSHandshakeTimeout:   30 * time.Second,
		ResponseHeaderTimeout: 2 * time.Minute,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   connections + 1,
		// Bodies are read in large pieces straight from the connection;
		// the buffer only holds the headers.
		ReadBufferSize: 64 << 10,
		Protocols:      new(http.Protocols),
		// Ask for the bytes as stored: a transparently decompressed body
		// has no length and is not what the checksum was taken of.
		DisableCompression: true,
	}
	t.Protocols.SetHTTP1(true)
	return t, nil
}
