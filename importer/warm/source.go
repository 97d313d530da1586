package warm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/blob"
	"github.com/diskimporter/diskimporter/importer/fetch"
)

// maxConfigSize bounds the image config, read into memory: one is a few
// KiB. (The manifests are bounded by blob.Resolve.)
const maxConfigSize = 16 << 20

// resumeProbe is the first GET's Range when a blob is read from the
// middle: the request only learns where the registry redirects and that
// the store answers Range requests.
const resumeProbe = 64 << 10

// source is the registry the image is read from.
type source struct {
	client  *http.Client
	scheme  string
	repo    name.Repository
	display string
	fetch   fetch.Options
}

// image is what a warm writes: the indexes (when the reference names
// one) and the platform's manifest as blob.Resolve read them, and the
// image's config (read from containerd when it has it, else from the
// registry).
type image struct {
	*blob.Resolved
	config []byte
}

// openSource authenticates to the registry of s.ref.
func openSource(ctx context.Context, s *settings) (*source, error) {
	repo := s.ref.Context()
	auth, err := s.Keychain.Resolve(repo)
	if err != nil {
		return nil, importer.ClassifySource(s.display, fmt.Errorf("credentials for %s: %w", repo, err))
	}
	rt, err := transport.NewWithContext(ctx, repo.Registry, auth, s.Transport, []string{repo.Scope(transport.PullScope)})
	if err != nil {
		return nil, importer.ClassifySource(s.display, fmt.Errorf("authenticating to %s: %w", repo.Registry, err))
	}
	// https unless PlainHTTP: go-containerregistry's Scheme() would say
	// http for loopback and private addresses.
	scheme := "https"
	if s.PlainHTTP {
		scheme = "http"
	}
	return &source{
		client:  &http.Client{Transport: rt, CheckRedirect: fetch.CheckRedirect},
		scheme:  scheme,
		repo:    repo,
		display: s.display,
		fetch:   s.ReadOptions.FetchOptions(s.Logger, s.display),
	}, nil
}

// resolve reads what ref names down to the manifest for platform, as
// every command reads an image (blob.Resolve), and bounds the config that
// manifest names.
func (s *source) resolve(ctx context.Context, ref name.Reference, platform v1.Platform) (*image, error) {
	r, err := blob.Resolve(ctx, s.client, s.scheme, ref, platform)
	if err != nil {
		return nil, err
	}
	if c := r.Manifest.Config; c.Size > maxConfigSize {
		return nil, fmt.Errorf("%w: config %s is %d bytes by its descriptor, more than the %d allowed", blob.ErrCorrupt, c.Digest, c.Size, maxConfigSize)
	}
	return &image{Resolved: r}, nil
}

// blobURL is where the registry serves blob d.
func (s *source) blobURL(d v1.Descriptor) (u, display string) {
	return fmt.Sprintf("%s://%s/v2/%s/blobs/%s", s.scheme, s.repo.RegistryStr(), s.repo.RepositoryStr(), d.Digest),
		s.repo.String() + "@" + d.Digest.String()
}

// open reads blob d from byte off on, through the registry's redirect,
// in bounded parallel Range requests. It returns the reader and the byte
// it starts at: 0 when the store does not answer Range requests, whatever
// off was.
func (s *source) open(ctx context.Context, d v1.Descriptor, off int64) (io.ReadCloser, int64, error) {
	u, display := s.blobURL(d)
	opts := s.fetch
	opts.Immutable = true // containerd checks the digest
	if off > 0 {
		opts.ProbeSize = resumeProbe
	}
	obj, resp, err := fetch.Open(ctx, s.client, u, display, nil, opts)
	if err != nil {
		return nil, 0, fmt.Errorf("reading blob %s: %w", display, err)
	}
	if obj.Size() >= 0 && obj.Size() != d.Size {
		resp.Body.Close()
		return nil, 0, fmt.Errorf("%w: %w: blob %s is %d bytes, its descriptor says %d", blob.ErrCorrupt, blob.ErrDigest, display, obj.Size(), d.Size)
	}
	if off > 0 && off < d.Size && obj.Ranged() {
		resp.Body.Close()
		r, err := obj.NewSectionReader(ctx, off, d.Size-off)
		if err != nil {
			return nil, 0, err
		}
		return r, off, nil
	}
	return obj.NewReader(ctx, resp), 0, nil
}

// readBlob reads the small blob d (a config) whole, checked against its
// digest.
func (s *source) readBlob(ctx context.Context, d v1.Descriptor) ([]byte, error) {
	r, _, err := s.open(ctx, d, 0)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, d.Size+1))
	if err != nil {
		return nil, fmt.Errorf("reading blob %s: %w", d.Digest, err)
	}
	sum := sha256.Sum256(b)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != d.Digest.String() || int64(len(b)) != d.Size {
		return nil, fmt.Errorf("%w: %w: blob %s is %d bytes with digest %s, its descriptor says %d bytes",
			blob.ErrCorrupt, blob.ErrDigest, d.Digest, len(b), got, d.Size)
	}
	return b, nil
}
