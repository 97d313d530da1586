package importer

import (
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
	"time"

	"github.com/diskimporter/diskimporter/importer/blob"
	"github.com/diskimporter/diskimporter/importer/fetch"
)

// source is a disk image that can be opened from its first byte as often
// as an upload needs it.
type source struct {
	// display is the source with credentials removed, for logs, errors and
	// annotations.
	display string
	size    int64 // -1 when the source does not say
	open    func(ctx context.Context) (io.ReadCloser, error)
	// readerAt gives random access to the source bytes, or is nil when the
	// source has none (an HTTP server that does not answer Range requests).
	readerAt func(ctx context.Context) io.ReaderAt
	// digest is the manifest digest of a docker:// source.
	digest string
}

// openSource opens o.Source and returns the source and a reader of its
// bytes.
func openSource(ctx context.Context, o *settings) (*source, io.ReadCloser, error) {
	u, err := url.Parse(o.Source)
	if err != nil || u.Scheme == "" || len(u.Scheme) == 1 { // "C:" is a path
		return openFile(o.Source)
	}
	switch u.Scheme {
	case "file":
		return openFile(u.Path)
	case "http", "https":
		return openHTTP(ctx, o, u)
	case "docker":
		return openRegistry(ctx, o, strings.TrimPrefix(o.Source, "docker://"))
	}
	return nil, nil, fmt.Errorf("%w: source scheme %q: use http://, https://, file://, docker:// or a path", ErrInvalidOptions, u.Scheme)
}

func openFile(path string) (*source, io.ReadCloser, error) {
	f, err := os.Open(path)
	if err != nil {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil, nil, fmt.Errorf("%w: %w", ErrSourceNotFound, err)
		case errors.Is(err, fs.ErrPermission):
			return nil, nil, fmt.Errorf("%w: %w", ErrSourceUnauthorized, err)
		}
		return nil, nil, fmt.Errorf("%w: %w", ErrSourceUnavailable, err)
	}
	if fi, err := f.Stat(); err == nil && fi.IsDir() {
		f.Close()
		return nil, nil, fmt.Errorf("%w: source %s is a directory; give the disk image file", ErrInvalidOptions, path)
	}
	// Seeking tells the size of files and block devices; a pipe has none
	// and is spooled.
	size, err := f.Seek(0, io.SeekEnd)
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		size = -1
	}
	src := &source{
		display: path,
		size:    size,
		open: func(context.Context) (io.ReadCloser, error) {
			f, err := os.Open(path)
			if err != nil {
				return nil, err
			}
			if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() && fi.Size() != size {
				f.Close()
				return nil, fmt.Errorf("%w: %s was %d bytes and is now %d", ErrSourceChanged, path, size, fi.Size())
			}
			return f, nil
		},
	}
	if size >= 0 {
		src.readerAt = func(context.Context) io.ReaderAt { return f }
	}
	return src, f, nil
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
		return nil, nil, sourceError(err)
	}
	src := &source{
		display: display,
		size:    obj.Size(),
		open: func(ctx context.Context) (io.ReadCloser, error) {
			return sourceReader{obj.NewReader(ctx, nil)}, nil
		},
	}
	if obj.Ranged() && obj.Size() > 0 {
		src.readerAt = func(ctx context.Context) io.ReaderAt {
			return sourceReaderAt{obj.ReaderAt(ctx)}
		}
	}
	return src, sourceReader{obj.NewReader(ctx, resp)}, nil
}

// sourceError classifies a failure to read an HTTP source.
func sourceError(err error) error {
	var se *fetch.StatusError
	switch {
	case err == nil, err == io.EOF:
		return err
	case errors.Is(err, fetch.ErrChanged):
		return fmt.Errorf("%w: %w", ErrSourceChanged, err)
	case errors.Is(err, blob.ErrDigest):
		return fmt.Errorf("%w: %w", ErrCorruptSource, err)
	case errors.As(err, &se) && (se.Code == http.StatusNotFound || se.Code == http.StatusGone):
		return fmt.Errorf("%w: %w", ErrSourceNotFound, err)
	case errors.As(err, &se) && (se.Code == http.StatusUnauthorized || se.Code == http.StatusForbidden):
		return fmt.Errorf("%w: %w", ErrSourceUnauthorized, err)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err // classified by the reader of the source
	}
	return fmt.Errorf("%w: %w", ErrSourceUnavailable, err)
}

// sourceReader classifies the read errors of an HTTP source.
type sourceReader struct{ rc io.ReadCloser }

func (r sourceReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	return n, sourceError(err)
}

func (r sourceReader) Close() error { return r.rc.Close() }

// sourceReaderAt classifies the read errors of random access to an HTTP
// source.
type sourceReaderAt struct{ ra io.ReaderAt }

func (r sourceReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := r.ra.ReadAt(p, off)
	return n, sourceError(err)
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
