package importer

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/diskimporter/diskimporter/importer/blob"
	"github.com/diskimporter/diskimporter/importer/fetch"
	"github.com/diskimporter/diskimporter/tlsconfig"
)

// AnnotationSourceDigest records the manifest digest of a docker:// source.
const AnnotationSourceDigest = "io.diskimporter.source.digest"

// openRegistry opens the disk of the containerDisk image ref (a docker://
// source): its layer blob is read with the fetch engine, and checked
// against its digest before the disk's end is reported.
func openRegistry(ctx context.Context, o *settings, ref string) (*source, io.ReadCloser, error) {
	d, display, err := openImage(ctx, o, ref, nil)
	if err != nil {
		return nil, nil, err
	}
	// A blob's digest is checked over the whole blob: the disk is read
	// again from its first byte.
	open := func(ctx context.Context, off int64) (io.ReadCloser, error) {
		if off > 0 {
			return nil, errFromStart
		}
		ctx, cancel := context.WithCancel(ctx)
		rc, err := d.Reader(ctx)
		if err != nil {
			cancel()
			return nil, ClassifySource(display, err)
		}
		if d.Compressed() {
			// The layer is decoded inside rc: on a goroutine of its own,
			// beside the new layer's hash. Closing it ends a read of the
			// layer in progress.
			ra := newReadAhead(rc, func() { rc.Close() }).interruptWith(cancel)
			return sourceReader{readCloser{ra, ra}, display}, nil
		}
		return sourceReader{readCloser{rc, closeFunc(func() error { defer cancel(); return rc.Close() })}, display}, nil
	}
	rc, err := open(ctx, 0)
	if err != nil {
		return nil, nil, err
	}
	src := &source{display: display, size: d.Size, open: open, digest: d.Ref.DigestStr(), validator: d.Layer.Digest.String() + " " + d.Path}
	if !d.Compressed() {
		src.readerAt = func(ctx context.Context) io.ReaderAt { return sourceReaderAt{d.ReaderAt(ctx), display} }
	}
	return src, rc, nil
}

// fetchOptions are how the source's bytes are read.
func (o *settings) fetchOptions(display string) fetch.Options {
	return o.ReadOptions.FetchOptions(o.Logger, display)
}

// RegistryReadTransport is the base transport for reading images and blobs
// from the registry r describes, and from where it redirects blob reads:
// the source transport (not pinned: the cipher's cost is the server's
// choice too), trusting r.RegistryTLS's CA file and client certificate,
// capped at its MaxVersion (0: no cap), with room for connections idle
// connections, and https only unless
// r.PlainHTTP. Credentials are added above it, for the registry's host
// only.
func RegistryReadTransport(r RegistryOptions, connections int) (http.RoundTripper, error) {
	t, err := SourceTransport(r.RegistryTLS.CAFile, r.RegistryTLS.InsecureSkipVerify, connections)
	if err != nil {
		return nil, err
	}
	if r.RegistryTLS.ClientCertFile != "" || r.RegistryTLS.ClientKeyFile != "" {
		cert, err := tls.LoadX509KeyPair(r.RegistryTLS.ClientCertFile, r.RegistryTLS.ClientKeyFile)
		if err != nil {
			return nil, fmt.Errorf("%w: client certificate: %w", ErrInvalidOptions, err)
		}
		t.TLSClientConfig.Certificates = []tls.Certificate{cert}
	}
	t.TLSClientConfig.MaxVersion = r.RegistryTLS.MaxVersion
	if r.PlainHTTP {
		return t, nil
	}
	return httpsOnly{t}, nil
}

// openImage resolves the image of the docker:// source ref and finds its
// disk, for an import and an inspection alike. wrap, when not nil, wraps
// the base transport (an inspection counts the bytes read). It returns the
// disk and the source's display name.
func openImage(ctx context.Context, o *settings, ref string, wrap func(http.RoundTripper) http.RoundTripper) (*blob.Disk, string, error) {
	r, err := parseSourceRef(o, ref)
	if err != nil {
		return nil, "", CheckSource("docker://" + ref) // says what is wrong, redacted
	}
	t, err := registrySourceTransport(o)
	if err != nil {
		return nil, "", err
	}
	if wrap != nil {
		t = wrap(t)
	}
	display := "docker://" + r.String()
	d, err := blob.Open(ctx, r, blob.Options{
		Keychain:  o.sourceKeychain,
		Transport: t,
		Platform:  &o.platform,
		Fetch:     o.fetchOptions(display),
		PlainHTTP: o.SourcePlainHTTP,
	})
	if err != nil {
		return nil, "", ClassifySource(display, err)
	}
	return d, display, nil
}

// registrySourceTransport is the base transport of a docker:// source: its
// registry is reached with the source's TLS settings, over https unless
// SourcePlainHTTP.
func registrySourceTransport(o *settings) (http.RoundTripper, error) {
	return RegistryReadTransport(RegistryOptions{
		RegistryTLS: tlsconfig.Options{CAFile: o.SourceCAFile, InsecureSkipVerify: o.SourceInsecureSkipVerify},
		PlainHTTP:   o.SourcePlainHTTP,
	}, o.Connections)
}

// parseSourceRef parses the reference of a docker:// source, as a plain
// http one when SourcePlainHTTP allows it.
func parseSourceRef(o *settings, ref string) (name.Reference, error) {
	if o.SourcePlainHTTP {
		return name.ParseReference(ref, name.Insecure)
	}
	return name.ParseReference(ref)
}

// closeFunc is an io.Closer.
type closeFunc func() error

func (f closeFunc) Close() error { return f() }
