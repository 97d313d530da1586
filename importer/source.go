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
	}
	return nil, nil, fmt.Errorf("%w: source scheme %q: use http://, https://, file:// or a path", ErrInvalidOptions, u.Scheme)
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

// httpValidator is what identifies one version of an HTTP resource.
type httpValidator struct {
	length       int64
	etag         string
	lastModified string
}

func validatorOf(resp *http.Response) httpValidator {
	return httpValidator{resp.ContentLength, resp.Header.Get("ETag"), resp.Header.Get("Last-Modified")}
}

func openHTTP(ctx context.Context, o *settings, u *url.URL) (*source, io.ReadCloser, error) {
	client, err := sourceClient(o)
	if err != nil {
		return nil, nil, err
	}
	display := Redact(u.String())
	get := func(ctx context.Context) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrInvalidOptions, display, err)
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("%w: GET %s: %w", ErrSourceUnavailable, display, redactErr(err, u))
		}
		if resp.StatusCode == http.StatusOK {
			return resp, nil
		}
		resp.Body.Close()
		class := ErrSourceUnavailable
		switch resp.StatusCode {
		case http.StatusNotFound, http.StatusGone:
			class = ErrSourceNotFound
		case http.StatusUnauthorized, http.StatusForbidden:
			class = ErrSourceUnauthorized
		}
		return nil, fmt.Errorf("%w: GET %s answered %s", class, display, resp.Status)
	}

	resp, err := get(ctx)
	if err != nil {
		return nil, nil, err
	}
	first := validatorOf(resp)
	src := &source{
		display: display,
		size:    first.length,
		open: func(ctx context.Context) (io.ReadCloser, error) {
			resp, err := get(ctx)
			if err != nil {
				return nil, err
			}
			if v := validatorOf(resp); v != first {
				resp.Body.Close()
				return nil, fmt.Errorf("%w: GET %s: was %+v, now %+v", ErrSourceChanged, display, first, v)
			}
			return resp.Body, nil
		},
	}
	if resp.Header.Get("Accept-Ranges") == "bytes" && first.length > 0 {
		src.readerAt = func(ctx context.Context) io.ReaderAt {
			return &rangeReaderAt{ctx: ctx, client: client, url: u.String(), display: display, v: first}
		}
	}
	return src, resp.Body, nil
}

// redactErr replaces the full URL in err's text (net/http puts it there) by
// its redacted form.
func redactErr(err error, u *url.URL) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		uerr.URL = Redact(u.String())
	}
	return err
}

// sourceClient returns the HTTP client for the source: its own TLS settings
// (not pinned: the source is read, not written, and the CPU cost is on the
// server's side of the cipher choice just as much), proxies from the
// environment, and no overall timeout, since a disk download takes as long
// as it takes.
func sourceClient(o *settings) (*http.Client, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: o.SourceInsecureSkipVerify}
	if o.SourceCAFile != "" {
		pem, err := os.ReadFile(o.SourceCAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: source CA file: %w", ErrInvalidOptions, err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: no PEM certificate in source CA file %s", ErrInvalidOptions, o.SourceCAFile)
		}
		tc.RootCAs = pool
	}
	t := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tc,
		TLSHandshakeTimeout:   30 * time.Second,
		ResponseHeaderTimeout: 2 * time.Minute,
		ReadBufferSize:        1 << 20,
		// Ask for the bytes as stored: a transparently decompressed body
		// has no length and is not what the checksum was taken of.
		DisableCompression: true,
	}
	return &http.Client{
		Transport: t,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 10 {
				return errors.New("stopped after 10 redirects")
			}
			if via[0].URL.Scheme == "https" && req.URL.Scheme != "https" {
				return fmt.Errorf("refusing redirect from https to %s", strings.ToUpper(req.URL.Scheme))
			}
			return nil
		},
	}, nil
}

// rangeReaderAt reads a byte range of an HTTP source per ReadAt with one
// bounded Range request, checking that the answer is exactly that range of
// the same version of the resource.
type rangeReaderAt struct {
	ctx     context.Context
	client  *http.Client
	url     string
	display string
	v       httpValidator
}

func (r *rangeReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= r.v.length {
		return 0, io.EOF
	}
	end := min(off+int64(len(p)), r.v.length) // exclusive
	req, err := http.NewRequestWithContext(r.ctx, http.MethodGet, r.url, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, end-1))
	if r.v.etag != "" {
		req.Header.Set("If-Range", r.v.etag)
	} else if r.v.lastModified != "" {
		req.Header.Set("If-Range", r.v.lastModified)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("%w: range GET %s: %w", ErrSourceUnavailable, r.display, err)
	}
	defer resp.Body.Close()
	want := fmt.Sprintf("bytes %d-%d/%d", off, end-1, r.v.length)
	switch {
	case resp.StatusCode == http.StatusOK:
		return 0, fmt.Errorf("%w: range GET %s answered 200 with the whole resource: it changed, or ignores Range", ErrSourceChanged, r.display)
	case resp.StatusCode != http.StatusPartialContent:
		return 0, fmt.Errorf("%w: range GET %s answered %s", ErrSourceUnavailable, r.display, resp.Status)
	case resp.Header.Get("Content-Range") != want:
		return 0, fmt.Errorf("%w: range GET %s answered Content-Range %q, want %q", ErrSourceChanged, r.display, resp.Header.Get("Content-Range"), want)
	}
	n, err := io.ReadFull(resp.Body, p[:end-off])
	if err != nil {
		return n, fmt.Errorf("%w: range GET %s: %w", ErrSourceUnavailable, r.display, err)
	}
	if end-off < int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}
