package importer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/diskimporter/diskimporter/importer/blob"
	"github.com/diskimporter/diskimporter/importer/fetch"
)

// AnnotationSourceDigest records the manifest digest of a docker:// source.
const AnnotationSourceDigest = "io.diskimporter.source.digest"

// openRegistry opens the disk of the containerDisk image ref (a docker://
// source): its layer blob is read with the fetch engine, and checked
// against its digest before the disk's end is reported.
func openRegistry(ctx context.Context, o *settings, ref string) (*source, io.ReadCloser, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: source docker://%s: %w (want docker://REGISTRY/REPO:TAG or @sha256:…)", ErrInvalidOptions, ref, err)
	}
	t, err := sourceTransport(o)
	if err != nil {
		return nil, nil, err
	}
	display := "docker://" + r.String()
	d, err := blob.Open(ctx, r, blob.Options{
		Keychain:  o.sourceKeychain,
		Transport: t,
		Platform:  &o.platform,
		Fetch:     o.fetchOptions(display),
	})
	if err != nil {
		return nil, nil, registrySourceError(display, err)
	}
	open := func(ctx context.Context) (io.ReadCloser, error) {
		rc, err := d.Reader(ctx)
		if err != nil {
			return nil, registrySourceError(display, err)
		}
		if d.Compressed() {
			// The layer is decoded inside rc: on a goroutine of its own,
			// beside the new layer's hash.
			ra := newReadAhead(rc, func() { rc.Close() })
			return sourceReader{readCloser{ra, ra}}, nil
		}
		return sourceReader{rc}, nil
	}
	rc, err := open(ctx)
	if err != nil {
		return nil, nil, err
	}
	src := &source{display: display, size: d.Size, open: open, digest: d.Ref.DigestStr()}
	if !d.Compressed() {
		src.readerAt = func(ctx context.Context) io.ReaderAt { return sourceReaderAt{d.ReaderAt(ctx)} }
	}
	return src, rc, nil
}

// registrySourceError classifies a failure to find or open the disk of a
// docker:// source.
func registrySourceError(display string, err error) error {
	var terr *transport.Error
	switch {
	case errors.As(err, &terr) && (terr.StatusCode == http.StatusUnauthorized || terr.StatusCode == http.StatusForbidden):
		return fmt.Errorf("%w: %s: %w; check --source-username/--source-password or the Docker config", ErrSourceUnauthorized, display, err)
	case errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound, errors.Is(err, blob.ErrPlatform):
		return fmt.Errorf("%w: %s: %w", ErrSourceNotFound, display, err)
	case errors.Is(err, blob.ErrNoDisk), errors.Is(err, blob.ErrLayer):
		return fmt.Errorf("%w: %s: %w", ErrUnsupportedFormat, display, err)
	}
	return sourceError(err)
}

// fetchOptions are how the source's bytes are read.
func (o *settings) fetchOptions(display string) fetch.Options {
	return fetch.Options{
		Connections:  o.Connections,
		ChunkSize:    o.ChunkSize,
		Retries:      o.Retries,
		StallTimeout: o.StallTimeout,
		OnRetry: func(offset int64, err error) {
			o.Logger.Warn("source read failed; resuming", "source", display, "offset", offset, "error", err)
			if o.OnRetry != nil {
				o.OnRetry(Retry{Stage: RetrySource, Offset: offset, Err: err})
			}
		},
	}
}
